"""What the user sees: the plan as a table and a DAG, live run progress, and run results.

Every view has an HTML form for JupyterLab and a text form for terminals and logs.
"""

import html
import sys

_STATE_WORDS = {
    "PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "done", "FAILED": "failed",
    "SKIPPED": "skipped", "CANCELED": "canceled",
}
_STATE_COLOURS = {
    "PENDING": "#9e9e9e", "RUNNING": "#1e88e5", "SUCCEEDED": "#43a047", "FAILED": "#e53935",
    "SKIPPED": "#bdbdbd", "CANCELED": "#fb8c00",
}


def _layers(plan):
    """Steps grouped by depth: a step sits one layer below its deepest upstream step."""
    depth = {}
    for step in plan.steps:
        depth[step.name] = 1 + max((depth[name] for name in step.upstream), default=-1)
    layers = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for step in plan.steps:
        layers[depth[step.name]].append(step)
    return layers


def _table(headers, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _html_table(headers, rows):
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{cell}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _upstream_text(step):
    return ", ".join(name + ("*" if name in step.inferred else "") for name in step.upstream) or "-"


def _inputs_text(step):
    return ", ".join(f"{var} <- {producer}" for var, producer in step.inputs.items()) or "-"


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
                prefix = f"[{depth + 1}]" if i == 0 else "   "
                arrow = f"  <- {_upstream_text(step)}" if step.upstream else ""
                lines.append(f"{prefix} {step.name}{arrow}")
        return "\n".join(lines)

    def dag_svg(self):
        """The DAG as an inline SVG: one row per layer, arrows from each upstream step."""
        layers = _layers(self.plan)
        box_w, box_h, gap_x, gap_y = 150, 30, 30, 50
        width = max(len(layer) for layer in layers) * (box_w + gap_x) + gap_x
        height = len(layers) * (box_h + gap_y) + gap_y // 2
        where = {}
        for row, layer in enumerate(layers):
            offset = (width - len(layer) * (box_w + gap_x) + gap_x) / 2
            for col, step in enumerate(layer):
                where[step.name] = (offset + col * (box_w + gap_x), gap_y // 2 + row * (box_h + gap_y))
        parts = []
        for step in self.plan.steps:
            x2, y2 = where[step.name]
            for name in step.upstream:
                x1, y1 = where[name]
                dash = " stroke-dasharray='4 3'" if name not in step.inferred else ""
                parts.append(
                    f"<line x1='{x1 + box_w / 2}' y1='{y1 + box_h}' x2='{x2 + box_w / 2}' y2='{y2}' "
                    f"stroke='#555' marker-end='url(#arrow)'{dash}/>"
                )
        for name, (x, y) in where.items():
            parts.append(
                f"<rect x='{x}' y='{y}' width='{box_w}' height='{box_h}' rx='6' fill='#e3f2fd' stroke='#1e88e5'/>"
                f"<text x='{x + box_w / 2}' y='{y + box_h / 2 + 5}' text-anchor='middle' "
                f"font-family='sans-serif' font-size='13'>{html.escape(name)}</text>"
            )
        return (
            f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
            "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='8' markerHeight='8' "
            "orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#555'/></marker></defs>"
            + "".join(parts) + "</svg>"
        )

    def _footer(self):
        params = ", ".join(f"{name}={value!r}" for name, value in self.plan.params.items()) or "none"
        return [f"params: {params}", *(f"warning: {w}" for w in self.plan.warnings)]

    def __repr__(self):
        return "\n".join(
            [f"pipeline {self.plan.name}", _table(self._HEADERS, list(self._rows())), "", self.dag_text(), "",
             *self._footer()]
        )

    def _repr_html_(self):
        rows = [[html.escape(str(cell)) for cell in row] for row in self._rows()]
        footer = "".join(f"<div>{html.escape(line)}</div>" for line in self._footer())
        return (
            f"<div><b>pipeline {html.escape(self.plan.name)}</b>{_html_table(self._HEADERS, rows)}"
            f"<div>{self.dag_svg()}</div>{footer}"
            "<div style='color:#777'>(…) kept because the step is last; * inferred from data; "
            "dashed arrows: --after</div></div>"
        )


def check_text(plan):
    """What `check` reports when the pipeline has no problems: a summary line and the warnings."""
    count = f"{len(plan.steps)} step{'' if len(plan.steps) == 1 else 's'}"
    lines = [f"pipeline {plan.name}: {count}, no problems found."]
    return "\n".join(lines + [f"warning: {warning}" for warning in plan.warnings])


def _duration(seconds):
    return "" if seconds is None else f"{seconds:.1f}s"


def _step_state(step):
    """A step's state in words: "cached" when it reused an earlier run's outputs."""
    if step.state == "SUCCEEDED" and getattr(step, "cached_from", None):
        return "cached"
    return _STATE_WORDS.get(step.state, step.state.lower())


def _step_rows(run):
    for step in run.steps.values():
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in step.metrics.items())
        yield step, [step.name, _step_state(step), _duration(step.duration), metrics]


_RUN_HEADERS = ["step", "state", "time", "metrics"]


def run_text(run):
    title = f"run {run.id} ({run.runner}): {_STATE_WORDS.get(run.state, run.state)} in {_duration(run.duration)}"
    link = f"\n{run.url}" if getattr(run, "url", None) else ""  # a run on Kubeflow: its page in the UI
    return title + "\n" + _table(_RUN_HEADERS, [row for _, row in _step_rows(run)]) + link


def run_html(run):
    rows = []
    for step, row in _step_rows(run):
        colour = _STATE_COLOURS.get(step.state, "#000")
        row[1] = f"<span style='color:{colour};font-weight:bold'>{row[1]}</span>"
        rows.append([row[0], row[1], row[2], html.escape(row[3])])
    title = html.escape(f"run {run.id} ({run.runner}): ") + _STATE_WORDS.get(run.state, run.state)
    where = f"<div style='color:#777'>{html.escape(run.run_dir)}</div>" if run.run_dir else ""
    if getattr(run, "url", None):
        where = f"<div><a href='{html.escape(run.url)}' target='_blank'>{html.escape(run.url)}</a></div>"
    return f"<div><b>{title}</b> in {_duration(run.duration)}{_html_table(_RUN_HEADERS, rows)}{where}</div>"


class TextProgress:
    """Progress for terminals and logs: a line per state change, step output prefixed by its name."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.seen = {}

    def start(self, run):
        print(f"run {run.id}: {len(run.steps)} steps", file=self.out)

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


class NotebookProgress(TextProgress):
    """Progress in a notebook: a live status table updated in place, step output streamed below it."""

    def start(self, run):
        from IPython.display import display

        self.handle = display(run, display_id=True)

    def update(self, run):
        self.handle.update(run)

    def finish(self, run):
        self.handle.update(run)
        _flush_streams()


def _flush_streams():
    """Send the steps' streamed output before what follows the run (a kernel batches streams)."""
    sys.stdout.flush()
    sys.stderr.flush()


def default_progress():
    """Live table in a Jupyter kernel, plain lines anywhere else."""
    try:
        from IPython import get_ipython
    except ImportError:
        return TextProgress()
    shell = get_ipython()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        return NotebookProgress()
    return TextProgress()
