"""What the user sees: the plan as a table and a DAG, live run progress, and run results.

Every view has an HTML form for notebook front-ends and a text form (at most 100 columns) for
terminals and logs. The DAG is an SVG drawn here, needing no system binary: layers top to bottom,
a wide layer wrapped over several rows, edges routed through the gaps between rows and the
margins at the sides, so no edge crosses a box.

A run in a notebook has one live display: the full view is sent once, then only what changed
(states, times, metrics, new log lines) at most a few times a second, as a small script that
patches the view by element id; the final state is sent whole, without scripts, so the saved
notebook shows it anywhere. Front-ends that send no cell ids with their requests (nbclient,
papermill, jupyter console) get the plain text lines a terminal gets.
"""

import html
import itertools
import json
import os
import sys
import textwrap
import time
from collections import deque

TEXT_WIDTH = 100  # a terminal's or a log's columns: every text view fits
UPDATE_SECONDS = 0.25  # the live display sends changes at most this often (the final state always)
LOG_LINES = 200  # lines of each step's output a notebook display keeps

_STATE_WORDS = {
    "PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "done", "FAILED": "failed",
    "SKIPPED": "skipped", "CANCELED": "canceled",
}
_ENDED = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
_STATE_COLOURS = {  # word -> (fill, stroke): the DAG's boxes and the table's state words
    "pending": ("#f5f5f5", "#9e9e9e"), "running": ("#bbdefb", "#1e88e5"), "done": ("#c8e6c9", "#43a047"),
    "cached": ("#e8f5e9", "#81c784"), "failed": ("#ffcdd2", "#e53935"), "skipped": ("#eeeeee", "#bdbdbd"),
    "canceled": ("#ffe0b2", "#fb8c00"),
}
_STYLE = (
    "<style>.kfm table{border-collapse:collapse;margin:4px 0}"
    ".kfm table.kfm-t th,.kfm table.kfm-t td{text-align:left;vertical-align:top;padding:1px 10px 1px 0}"
    ".kfm pre{margin:0;max-height:16em;overflow:auto;white-space:pre-wrap;font-size:11px}"
    ".kfm summary{cursor:pointer;color:#555}.kfm .kfm-note{color:#777}"
    + "".join(
        f".kfm tr.kfm-{word} td.kfm-st{{color:{stroke};font-weight:bold}}"
        f".kfm g.kfm-{word} rect{{fill:{fill};stroke:{stroke}}}"
        for word, (fill, stroke) in _STATE_COLOURS.items()
    )
    + "</style>"
)


DEFAULT_NAME = "pipeline"  # a pipeline's name until `%pipeline init NAME` gives one


def pipeline_title(name):
    """How messages name a pipeline: "pipeline NAME", or, before it is given one, "the pipeline"."""
    return "the pipeline" if name == DEFAULT_NAME else f"pipeline {name}"


def html_block(inner):
    """`inner` as one of kfmagic's HTML views, with their style."""
    return f"<div class='kfm'>{_STYLE}{inner}</div>"


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _wrap(line, indent=2):
    """A line of free text within TEXT_WIDTH, its continuation lines indented."""
    return textwrap.fill(line, TEXT_WIDTH, subsequent_indent=" " * indent, break_on_hyphens=False) or line


def _layers(plan):
    """Steps grouped by depth: a step sits one layer below its deepest upstream step."""
    depth = {}
    for step in plan.steps:
        depth[step.name] = 1 + max((depth[name] for name in step.upstream), default=-1)
    layers = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for step in plan.steps:
        layers[depth[step.name]].append(step)
    return layers


def _fit(cells, limit):
    """Column widths whose table fits `limit` (two spaces between columns). A column gives way
    down to its longest item (a name, or `var <- step`, with its comma) up to 22 wide, else its
    longest piece of one (`<- step,`) up to 24, and to 8 at least, the one with the most to spare
    first; only past that do names break. Headers wrap."""
    columns = list(zip(*cells))
    widths = [max(map(len, column)) for column in columns]
    floors = []
    for column in columns:
        items = [item for cell in column[1:] for item in _items(cell)]
        pieces = [piece for item in items for piece in _pieces(item)]
        floors.append(max(8, min(22, max(map(len, items), default=0)), min(24, max(map(len, pieces), default=0))))
    while sum(widths) + 2 * (len(widths) - 1) > limit:
        spare = [width - floor for width, floor in zip(widths, floors)]
        column = spare.index(max(spare)) if max(spare) > 0 else widths.index(max(widths))
        if widths[column] <= 8:
            break
        widths[column] -= 1
    return widths


def _items(cell):
    """A cell's comma-separated items, each with the comma that follows it."""
    items = cell.split(", ")
    return [item + "," for item in items[:-1]] + items[-1:]


def _pieces(item):
    """Where an item too long for its column breaks: before its `<-`, else at its spaces."""
    var, arrow, rest = item.partition(" <- ")
    return [var, f"<- {rest}"] if arrow else item.split(" ")


def _wrap_items(cell, width):
    """A cell's lines within `width`, broken between its comma-separated items, and an item
    longer than the column before its `<-`."""
    units = []
    for item in _items(cell):
        pieces = [item] if len(item) <= width else _pieces(item)
        units.append(" ".join(piece.replace(" ", "\xa0") for piece in pieces))
    lines = textwrap.wrap(" ".join(units), width, break_on_hyphens=False)
    return [line.replace("\xa0", " ") for line in lines] or [""]


def _table(headers, rows):
    """A text table within TEXT_WIDTH: a cell too wide for its column wraps onto more lines."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = _fit(cells, TEXT_WIDTH)
    head, *body = [_table_lines(row, widths) for row in cells]
    return "\n".join([*head, "  ".join("-" * width for width in widths), *itertools.chain.from_iterable(body)])


def _table_lines(row, widths):
    """The text lines of one table row, each cell wrapped to its column's width."""
    wrapped = [_wrap_items(cell, width) for cell, width in zip(row, widths)]
    return [
        "  ".join(part.ljust(width) for part, width in zip(parts, widths)).rstrip()
        for parts in itertools.zip_longest(*wrapped, fillvalue="")
    ]


def _html_table(headers, rows, row_attributes=None):
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f"<tr{attributes}>" + "".join(f"<td{cell_attributes}>{cell}</td>" for cell_attributes, cell in row) + "</tr>"
        for attributes, row in zip(row_attributes or itertools.repeat(""), rows)
    )
    return f"<table class='kfm-t'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _upstream_text(step):
    return ", ".join(name + ("*" if name in step.inferred else "") for name in step.upstream) or "-"


def _inputs_text(step):
    return ", ".join(f"{var} <- {producer}" for var, producer in step.inputs.items()) or "-"


class _Grid:
    """Where the DAG's boxes go: one layer after another, top to bottom; a layer wider than the
    grid wraps onto more rows (on a shaded band, every other row shifted by half a box, so no
    box sits right below another of its layer). Boxes sit in rows, so the gaps between rows and
    the margins at the sides are free of boxes, and edges run only there."""

    WIDTH = 1000  # the boxes of a row fit this many pixels, however wide the layer
    BOX_H, GAP_X, GAP_Y, MARGIN, SIDE = 26, 24, 38, 4, 40
    CHAR_W = 7.0  # average width of a character at the boxes' font size

    def __init__(self, plan):
        self.layers = _layers(plan)
        longest = max((len(step.name) for step in plan.steps), default=4)
        self.box_w = round(min(max(longest * self.CHAR_W + 16, 80), 190))
        fits = max(3, self.WIDTH // (self.box_w + self.GAP_X))
        self.columns = min(fits, max((len(layer) for layer in self.layers), default=1))
        self.slots, self.bands, row = {}, [], 0  # name -> (row, column: half steps); (first, last row) of wrapped layers
        for layer in self.layers:
            first_row = row
            for start in range(0, len(layer), self.columns):
                chunk = layer[start:start + self.columns]
                first = self.columns - len(chunk) + (row - first_row) % 2  # a short row sits in the middle
                for column, step in enumerate(chunk):
                    self.slots[step.name] = (row, first / 2 + column)
                row += 1
            if row - first_row > 1:
                self.bands.append((first_row, row - 1))
        self.rows = row
        half = (self.box_w + self.GAP_X) / 2 if self.bands else 0
        self.width = round(2 * (self.MARGIN + self.SIDE) + self.columns * (self.box_w + self.GAP_X) - self.GAP_X + half)
        self.height = 2 * self.MARGIN + self.rows * (self.BOX_H + self.GAP_Y) - self.GAP_Y

    def box(self, name):
        """(x, y) of the top left corner of `name`'s box."""
        row, column = self.slots[name]
        return (self.MARGIN + self.SIDE + column * (self.box_w + self.GAP_X), self.MARGIN + row * (self.BOX_H + self.GAP_Y))

    def band(self, first_row, last_row):
        """(x, y, width, height) of the shading behind rows first_row..last_row, one layer."""
        top = self.MARGIN + first_row * (self.BOX_H + self.GAP_Y) - 6
        bottom = self.MARGIN + last_row * (self.BOX_H + self.GAP_Y) + self.BOX_H + 6
        return (self.MARGIN + self.SIDE - 8, top, self.width - 2 * (self.MARGIN + self.SIDE) + 16, bottom - top)

    def route(self, source, target, lane):
        """An edge from the bottom middle of `source`'s box to the top middle of `target`'s: straight
        across the gap to the next row; else into the gap below the source, along the margin on the
        target's side, and across the gap above the target. Edges of one source share `lane` (0..4),
        so they part like the branches of one line."""
        (sx, sy), (tx, ty) = self.box(source), self.box(target)
        x1, y1, x2, y2 = sx + self.box_w / 2, sy + self.BOX_H, tx + self.box_w / 2, ty
        if self.slots[target][0] == self.slots[source][0] + 1:
            return ("line", (x1, y1, x2, y2))
        shift = (lane - 2) * 4
        side = self.MARGIN + 8 + lane * 6
        if 2 * self.slots[target][1] >= self.columns:
            side = self.width - side
        below, above = y1 + self.GAP_Y / 2 + shift, y2 - self.GAP_Y / 2 + shift
        return ("path", f"M{x1:g} {y1:g}V{below:g}H{side:g}V{above:g}H{x2:g}V{y2:g}")


def _abbreviate(name, box_w):
    fits = int((box_w - 10) / _Grid.CHAR_W)
    return name if len(name) <= fits else name[: fits - 1] + "…"


def dag_svg(plan, ids=None, states=None):
    """The DAG as an inline SVG. `ids` (step -> element id) and `states` (step -> state word)
    colour the boxes of a run; without them, every box is a plain step of the plan."""
    grid = _Grid(plan)
    parts = [
        "<rect x='{:g}' y='{:g}' width='{:g}' height='{:g}' rx='8' fill='#f3f3f3'/>".format(*grid.band(*rows))
        for rows in grid.bands
    ]
    lanes = {step.name: number % 5 for number, step in enumerate(plan.steps)}
    for step in plan.steps:
        for name in step.upstream:
            kind, where = grid.route(name, step.name, lanes[name])
            dash = "" if name in step.inferred else " stroke-dasharray='5 3'"
            ends = f"data-from='{html.escape(name)}' data-to='{html.escape(step.name)}' stroke='#666'{dash} marker-end='url(#kfm-arrow)'"
            if kind == "line":
                parts.append("<line x1='{:g}' y1='{:g}' x2='{:g}' y2='{:g}' ".format(*where) + ends + "/>")
            else:
                parts.append(f"<path d='{where}' fill='none' {ends}/>")
    for step in plan.steps:
        x, y = grid.box(step.name)
        name = html.escape(step.name)
        element_id = f" id='{ids[step.name]}'" if ids else ""
        state = f"kfm-{states[step.name]}" if states else "kfm-plan"
        parts.append(
            f"<g{element_id} class='{state}' data-step='{name}'><title>{name}</title>"
            f"<rect x='{x:g}' y='{y:g}' width='{grid.box_w}' height='{grid.BOX_H}' rx='5' fill='#e3f2fd' stroke='#1e88e5'/>"
            f"<text x='{x + grid.box_w / 2:g}' y='{y + grid.BOX_H / 2 + 4:g}' text-anchor='middle' "
            f"font-family='sans-serif' font-size='12'>{html.escape(_abbreviate(step.name, grid.box_w))}</text></g>"
        )
    return (
        f"<svg class='kfm-dag' xmlns='http://www.w3.org/2000/svg' width='{grid.width}' height='{grid.height}' "
        f"viewBox='0 0 {grid.width} {grid.height}' style='max-width:100%;height:auto'>"
        "<defs><marker id='kfm-arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#666'/></marker></defs>"
        + "".join(parts) + "</svg>"
    )


def _legend(states=False):
    """What the DAG's lines (and, for a run, its colours) mean."""
    sample = "<svg width='34' height='8'><path d='M0 4H34' stroke='#666'{}/></svg>"
    dashed = sample.format(" stroke-dasharray='5 3'")
    colours = "".join(
        f" &nbsp;<span style='background:{fill};border:1px solid {stroke};padding:0 4px'>{word}</span>"
        for word, (fill, stroke) in _STATE_COLOURS.items()
    ) if states else ""
    return (
        f"<div class='kfm-note kfm-legend'>{sample.format('')} data flows (inferred) &nbsp; "
        f"{dashed} --after (no data needed){colours}</div>"
    )


class PlanView:
    """`%pipeline show`: steps, their upstream steps (* = inferred from data), inputs, outputs, params, DAG."""

    def __init__(self, plan):
        self.plan = plan

    def _rows(self):
        for step in self.plan.steps:
            outputs = list(step.outputs) + [f"({var})" for var in step.keep]
            yield [
                step.name, _upstream_text(step), _inputs_text(step), ", ".join(step.params) or "-",
                ", ".join(outputs) or "-", ", ".join(step.metrics) or "-",
            ]

    _HEADERS = ["step", "after (* inferred)", "inputs (var <- step)", "params", "outputs", "metrics"]

    def dag_text(self):
        lines = []
        for depth, layer in enumerate(_layers(self.plan)):
            for i, step in enumerate(layer):
                prefix = f"[{depth + 1}]" if i == 0 else " " * len(f"[{depth + 1}]")
                arrow = f"  <- {_upstream_text(step)}" if step.upstream else ""
                lines.append(_wrap(f"{prefix} {step.name}{arrow}", min(len(prefix) + len(step.name) + 6, 40)))
        return "\n".join(lines)

    def _footer(self):
        params = ", ".join(f"{name}={value!r}" for name, value in self.plan.params.items()) or "none"
        return [f"params: {params}", *(f"warning: {w}" for w in self.plan.warnings)]

    def __repr__(self):
        return "\n".join(
            [_wrap(pipeline_title(self.plan.name)), _table(self._HEADERS, list(self._rows())), "", self.dag_text(), "",
             *map(_wrap, self._footer())]
        )

    def _repr_html_(self):
        rows = [[("", html.escape(str(cell))) for cell in row] for row in self._rows()]
        footer = "".join(f"<div>{html.escape(line)}</div>" for line in self._footer())
        return (
            f"<div class='kfm'>{_STYLE}<b>{html.escape(pipeline_title(self.plan.name))}</b>{_html_table(self._HEADERS, rows)}"
            f"<div>{dag_svg(self.plan)}</div>{_legend()}{footer}"
            "<div class='kfm-note'>(…) kept because the step is last; * inferred from data</div></div>"
        )


def check_text(plan, drift=False):
    """What `check` reports when the pipeline plans: a summary line and the warnings. With `drift` (the
    saved notebook differs from the kernel, listed before), the summary says what it is about."""
    found = "no problems in what the kernel registered (the saved notebook differs: see above)" if drift else "no problems found"
    lines = [f"{pipeline_title(plan.name)}: {_count(len(plan.steps), 'step')}, {found}."]
    return "\n".join(lines + [f"warning: {warning}" for warning in plan.warnings])


def _duration(seconds):
    return "" if seconds is None else f"{seconds:.1f}s"


def _step_state(step):
    """A step's state in words: "cached" when it reused an earlier run's outputs."""
    if step.state == "SUCCEEDED" and getattr(step, "cached_from", None):
        return "cached"
    return _STATE_WORDS.get(step.state, step.state.lower())


def _metrics_text(step):
    return ", ".join(f"{k}={v:.4g}" for k, v in step.metrics.items())


def _step_cells(step):
    """What the run's table shows of a step: state, time (whole seconds while it runs), metrics."""
    time_text = f"{step.duration:.0f}s" if step.state == "RUNNING" else _duration(step.duration)
    return _step_state(step), time_text, _metrics_text(step)


_RUN_HEADERS = ["step", "state", "time", "metrics"]


def run_text(run):
    title = f"run {run.id} ({run.runner}): {_STATE_WORDS.get(run.state, run.state.lower())} in {_duration(run.duration)}"
    link = f"\n{run.url}" if getattr(run, "url", None) else ""  # a run on Kubeflow: its page in the UI
    return title + "\n" + _table(_RUN_HEADERS, [[step.name, *_step_cells(step)] for step in run.steps.values()]) + link


def _ended(run):
    return sum(step.state in _ENDED for step in run.steps.values())


def _log_html(lines, dropped, opened=False):
    """A step's output, collapsed under a summary line (`opened`: a failed step's)."""
    if not lines:
        return ""
    earlier = f"<span class='kfm-note'>({dropped} earlier lines not kept)</span>\n" if dropped else ""
    text = "".join(html.escape(line) + "\n" for line in lines)
    return (
        f"<details{' open' if opened else ''}><summary>log ({_count(len(lines) + dropped, 'line')})</summary>"
        f"<pre>{earlier}{text}</pre></details>"
    )


def run_html(run, plan=None, key=None, logs=None):
    """A run as HTML: title, progress bar, the DAG coloured by state (with `plan`), and per step
    its state, time, metrics and output. `key` gives the elements the ids live patches address."""
    steps = list(run.steps.values())

    def ident(suffix):
        return f" id='{key}-{suffix}'" if key else ""

    rows, row_attributes = [], []
    for i, step in enumerate(steps):
        word, time_text, metrics = _step_cells(step)
        lines, dropped = (logs or {}).get(step.name, ((), 0))
        error = step.error.splitlines() if step.state == "FAILED" and step.error and not lines else []
        cached = f" title='outputs reused from run {html.escape(step.cached_from)}'" if word == "cached" else ""
        row_attributes.append(f" class='kfm-{word}'{ident(f'{i}-r')}{cached}")
        log = _log_html([*lines, *error], dropped, opened=step.state == "FAILED")
        rows.append([("", html.escape(step.name)), (" class='kfm-st'", word), ("", time_text),
                     ("", html.escape(metrics)), (ident(f"{i}-g"), log)])
    title = (
        f"<b>{html.escape(f'run {run.id} ({run.runner})')}: <span{ident('h')}>"
        f"{_STATE_WORDS.get(run.state, run.state.lower())}</span></b> "
        f"<progress{ident('b')} max='{len(steps)}' value='{_ended(run)}'></progress> "
        f"<span{ident('k')}>{_progress_text(run)}</span>"
    )
    where = f"<div class='kfm-note'>{html.escape(run.run_dir)}</div>" if run.run_dir else ""
    if getattr(run, "url", None):
        where = f"<div><a href='{html.escape(run.url)}' target='_blank'>{html.escape(run.url)}</a></div>"
    picture = ""
    if plan is not None:
        ids = {step.name: f"{key}-n{i}" for i, step in enumerate(steps)} if key else None
        picture = f"<div>{dag_svg(plan, ids, {step.name: _step_state(step) for step in steps})}</div>{_legend(True)}"
    table = _html_table(_RUN_HEADERS + ["output"], rows, row_attributes)
    return f"<div class='kfm'{ident('view')}>{_STYLE}{title}{picture}{table}{where}</div>"


def _progress_text(run):
    return f"{_ended(run)}/{len(run.steps)} steps ended, {_duration(run.duration)}"


class TextProgress:
    """Progress for terminals and logs: a line per state change, step output prefixed by its name."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.seen = {}

    def start(self, run):
        print(f"run {run.id}: {_count(len(run.steps), 'step')}", file=self.out)

    def update(self, run):
        for step in run.steps.values():
            if self.seen.get(step.name) != step.state:
                self.seen[step.name] = step.state
                if step.state != "PENDING":
                    duration = f" ({_duration(step.duration)})" if step.finished else ""
                    print(f"[{step.name}] {_step_state(step)}{duration}", file=self.out)

    def output(self, step, stream, line):
        print(f"[{step}] {line}", file=sys.stderr if stream == "stderr" else self.out)

    def finish(self, run):
        self.update(run)
        print(run_text(run), file=self.out)
        _flush_streams()


# Applies one patch to a live display: rows' state, time and metrics, DAG boxes' state, new log
# lines, the title. Defined by the live display itself, so a front-end that runs no scripts shows
# the display as first sent, and then the final state.
_PATCH_SCRIPT = """<script>window.kfmagicPatch=function(k,d){
var $=function(s){return document.getElementById(k+'-'+s)};
(d.s||[]).forEach(function(s){var r=$(s[0]+'-r');if(!r)return;r.setAttribute('class','kfm-'+s[1]);
r.cells[1].textContent=s[1];r.cells[2].textContent=s[2];r.cells[3].textContent=s[3];
var n=$('n'+s[0]);if(n)n.setAttribute('class','kfm-'+s[1]);});
(d.l||[]).forEach(function(l){var p=$(l[0]+'-p');if(!p){$(l[0]+'-g').innerHTML='<details><summary>log (<span id='
+k+'-'+l[0]+'-c></span>)</summary><pre id='+k+'-'+l[0]+'-p></pre></details>';p=$(l[0]+'-p');}
p.textContent=(p.textContent+l[1]).slice(-100000);$(l[0]+'-c').textContent=l[2];});
if(d.h){$('h').textContent=d.h[0];$('b').value=d.h[1];$('k').textContent=d.h[2];}};</script>"""


class _StepLog:
    """A step's output as a notebook display keeps it: its last LOG_LINES lines, and how many came."""

    def __init__(self):
        self.lines, self.count, self.unsent = deque(maxlen=LOG_LINES), 0, deque(maxlen=LOG_LINES)

    def add(self, line):
        self.lines.append(line)
        self.unsent.append(line)
        self.count += 1

    def take_unsent(self):
        text = "".join(line + "\n" for line in self.unsent)
        self.unsent.clear()
        return text


class NotebookProgress:
    """Progress in a notebook: one live display of the run, updated in place.

    The whole view is sent once; then, at most every UPDATE_SECONDS, a patch with only what
    changed (a step's state, time, metrics, new output lines) replaces a second, invisible display
    whose script applies it; the final state replaces the view whole, and the patch display is
    emptied. A 500-step run so sends its view twice plus small patches (see tests/test_display.py).
    """

    def __init__(self, plan=None, interval=UPDATE_SECONDS):
        self.plan, self.interval = plan, interval
        self.logs, self.sent, self.sent_at, self.run = {}, {}, 0.0, None

    def start(self, run):
        from IPython.display import display

        self.run, self.key = run, f"kfm-{os.urandom(4).hex()}"
        self.index = {name: i for i, name in enumerate(run.steps)}
        self.sent = {name: _step_cells(step) for name, step in run.steps.items()}
        self.sent_header = self._header(run)
        view = _PATCH_SCRIPT + run_html(run, self.plan, self.key)
        self.view = display({"text/html": view, "text/plain": run_text(run)}, raw=True, display_id=True)
        self.patch = display({"text/plain": ""}, raw=True, display_id=True)
        self.sent_at = time.monotonic()

    def update(self, run):
        self.run = run
        self._send_changes()

    def output(self, step, stream, line):
        self.logs.setdefault(step, _StepLog()).add(line)
        self._send_changes()

    def finish(self, run):
        logs = {name: (log.lines, log.count - len(log.lines)) for name, log in self.logs.items()}
        self.view.update({"text/html": run_html(run, self.plan, logs=logs), "text/plain": run_text(run)}, raw=True)
        self.patch.update({"text/plain": ""}, raw=True)
        _flush_streams()

    def _header(self, run):
        return [_STATE_WORDS.get(run.state, run.state.lower()), _ended(run), _progress_text(run)]

    def _send_changes(self):
        """Send what changed since the last patch, unless one went out less than `interval` ago."""
        now = time.monotonic()
        if self.run is None or now - self.sent_at < self.interval:
            return
        changes = {"s": [], "l": []}
        for name, step in self.run.steps.items():
            cells = _step_cells(step)
            if name in self.index and cells != self.sent.get(name):
                self.sent[name] = cells
                changes["s"].append([self.index[name], *cells])
        for name, log in self.logs.items():
            if log.unsent and name in self.index:
                changes["l"].append([self.index[name], log.take_unsent(), _count(log.count, "line")])
        header = self._header(self.run)
        if header[:2] != self.sent_header[:2] or changes["s"] or changes["l"]:
            changes["h"] = self.sent_header = header
        if len(changes) > 2:
            data = json.dumps(changes, separators=(",", ":")).replace("</", "<\\/")
            script = f"<script>window.kfmagicPatch&&kfmagicPatch('{self.key}',{data})</script>"
            self.patch.update({"text/html": script, "text/plain": ""}, raw=True)
            self.sent_at = now


def _flush_streams():
    """Send the steps' streamed output before what follows the run (a kernel batches streams)."""
    sys.stdout.flush()
    sys.stderr.flush()


def _renders_html(shell):
    """Whether the kernel's front-end shows a live HTML display: notebook front-ends (JupyterLab,
    Notebook 7, VS Code) send each cell's id with its request; nbclient, papermill and jupyter
    console send none, and keep or print outputs as text, where a line per change reads best.
    (An ipykernel before 6 cannot say which request runs: text.)"""
    get_parent = getattr(getattr(shell, "kernel", None), "get_parent", None)
    request = get_parent("shell") if get_parent is not None else None
    return bool((request or {}).get("metadata", {}).get("cellId"))


def default_progress(plan=None):
    """A live display in a notebook front-end, plain lines anywhere else (terminals, nbclient, papermill)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return TextProgress()
    shell = get_ipython()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell" and _renders_html(shell):
        return NotebookProgress(plan)
    return TextProgress()


def _value_text(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _combination_text(combination):
    return " ".join(f"{name}={_value_text(value)}" for name, value in combination.items())


class SweepProgress:
    """A sweep's progress in plain lines, in a notebook as in a terminal: each shared step's state
    changes once (the first combination's run runs them), each other step's with its combination's
    number (`[train c3] done (2.1s)`), what the steps print likewise, and a line per combination as it
    ends. The Sweep shown at the end is the table."""

    def __init__(self, combinations, shared, metric, out=None):
        self.combinations, self.shared, self.metric = combinations, set(shared), metric
        self.out = out or sys.stdout
        self.seen = {}

    def of(self, index):
        """The progress of combination `index`'s run, as a run's progress is called."""
        return _CombinationProgress(self, index)

    def _label(self, index, step):
        return step if step in self.shared else f"{step} c{index + 1}"

    def update(self, index, run):
        for step in run.steps.values():
            key = (index if step.name not in self.shared else 0, step.name)
            if (index == 0 or step.name not in self.shared) and self.seen.get(key) != step.state:
                self.seen[key] = step.state
                if step.state != "PENDING":
                    duration = f" ({_duration(step.duration)})" if step.finished else ""
                    print(f"[{self._label(index, step.name)}] {_step_state(step)}{duration}", file=self.out)

    def output(self, index, step, stream, line):
        print(f"[{self._label(index, step)}] {line}", file=sys.stderr if stream == "stderr" else self.out)

    def finish(self, index, run):
        self.update(index, run)
        step, name = self.metric
        value = run.steps[step].metrics.get(name) if step in run.steps else None
        said = f", {step}.{name}={_value_text(value)}" if value is not None else ""
        failed = [s for s in run.steps.values() if s.state == "FAILED" and s.name not in self.shared]
        why = f": step {failed[0].name!r} failed" if failed else ""
        state = _STATE_WORDS.get(run.state, run.state.lower())
        print(f"c{index + 1} ({_combination_text(self.combinations[index])}): {state}{why}{said}", file=self.out)
        _flush_streams()


class _CombinationProgress:
    """SweepProgress seen as the progress of one combination's run."""

    def __init__(self, sweep_progress, index):
        self.sweep_progress, self.index = sweep_progress, index

    def start(self, run):
        pass  # the sweep's plan was said before it started

    def update(self, run):
        self.sweep_progress.update(self.index, run)

    def output(self, step, stream, line):
        self.sweep_progress.output(self.index, step, stream, line)

    def finish(self, run):
        self.sweep_progress.finish(self.index, run)


def _sweep_title(sweep):
    step, name = sweep.metric
    ended = sum(run.state in _ENDED for run in sweep.runs)
    how = f"random search, seed {sweep.seed}" if sweep.seed is not None else "grid"
    counts = ", ".join(
        f"{count} {word}" for word, count in (
            ("done", len(sweep.finished())),
            ("failed", sum(run.state == "FAILED" for run in sweep.runs)),
            ("stopped", sum(run.state == "CANCELED" for run in sweep.runs)),
        ) if count
    )
    stopped = f"; stopped after {ended} of {len(sweep.runs)}" if sweep.state == "CANCELED" else ""
    return (
        f"sweep of {sweep.pipeline} ({how}): {_count(len(sweep.runs), 'combination')}, {counts or 'none ended'}{stopped}; "
        f"by {step}.{name}, {'highest' if sweep.maximize else 'lowest'} first"
    )


def _sweep_rows(sweep):
    """[number, each swept value, the metric, state, run id] per combination, best first."""
    rows = []
    for i in sweep.order():
        value = sweep.value(i)
        run = sweep.runs[i]
        rows.append([
            f"c{i + 1}", *(_value_text(sweep.combinations[i][name]) for name in sweep.params),
            "-" if value is None else _value_text(value), _STATE_WORDS.get(run.state, run.state.lower()), run.id,
        ])
    return rows


def _sweep_headers(sweep):
    return ["#", *sweep.params, ".".join(sweep.metric), "state", "run"]


def sweep_text(sweep):
    shared = f"\nshared steps, run once: {', '.join(sweep.shared)}" if sweep.shared else ""
    return _wrap(_sweep_title(sweep)) + shared + "\n" + _table(_sweep_headers(sweep), _sweep_rows(sweep))


def sweep_html(sweep):
    """The sweep's table, best first, and (with matplotlib) its metric against each parameter."""
    rows = [[("", html.escape(cell)) for cell in row] for row in _sweep_rows(sweep)]
    attributes = [f" class='kfm-{row[-2][1]}'" for row in rows]
    for row in rows:
        row[-2] = (" class='kfm-st'", row[-2][1])
    shared = f"<div class='kfm-note'>shared steps, run once: {html.escape(', '.join(sweep.shared))}</div>" if sweep.shared else ""
    picture = _sweep_png(sweep)
    image = f"<div><img src='data:image/png;base64,{picture}'/></div>" if picture else ""
    table = _html_table(_sweep_headers(sweep), rows, attributes)
    return f"<div class='kfm'>{_STYLE}<b>{html.escape(_sweep_title(sweep))}</b>{shared}{table}{image}</div>"


def _sweep_png(sweep):
    """The sweep's figure as base64 PNG text, or "" without matplotlib or anything to plot."""
    import base64
    import io

    try:
        figure = sweep_figure(sweep)
    except ImportError:
        return ""
    if figure is None:
        return ""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode()


def sweep_figure(sweep):
    """The metric against each swept parameter, one panel each (a parameter's words or lists on an
    axis of their own); None when no combination reported the metric. Needs matplotlib."""
    from matplotlib.figure import Figure

    measured = [i for i in sweep.order() if sweep.value(i) is not None]
    if not measured or not sweep.params:
        return None
    figure = Figure(figsize=(3.2 * len(sweep.params), 2.6))
    for panel, name in enumerate(sweep.params, 1):
        axes = figure.add_subplot(1, len(sweep.params), panel)
        values = [sweep.combinations[i][name] for i in measured]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            positions = values
            if min(values) > 0 and max(values) / min(values) >= 100:
                axes.set_xscale("log")
        else:
            labels = list(dict.fromkeys(_value_text(v) for v in values))
            positions = [labels.index(_value_text(v)) for v in values]
            axes.set_xticks(range(len(labels)), labels)
        axes.scatter(positions, [sweep.value(i) for i in measured])
        axes.set_xlabel(name)
        if panel == 1:
            axes.set_ylabel(".".join(sweep.metric))
    figure.tight_layout()
    return figure
