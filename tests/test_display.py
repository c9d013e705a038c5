"""What the user sees: `%pipeline show`'s DAG and tables, the live run display and what it sends
to the front-end, and plain text where the front-end keeps text (nbclient, papermill, terminals)."""

import io
import itertools
import json
import os
import time
import xml.etree.ElementTree as ET

import pytest
from conftest import REPO, Kernel, execute, make_notebook

from kfmagic import display, notebook
from kfmagic.backends.base import Run, StepRun
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

SVG = "{http://www.w3.org/2000/svg}"


def plan_of(cells):
    pipeline = Pipeline(name="generated")
    for number, source in enumerate(cells):
        pipeline.add(parse_cell(source), label=f"cell {number}")
    return pipeline.plan()


def chain(n):
    return ["%%step s0\nv0 = 1"] + [f"%%step s{i}\nv{i} = v{i - 1} + 1" for i in range(1, n)]


def fan_out(n):
    """One step feeding n - 2 steps that one step joins: a layer n - 2 wide."""
    if n < 3:
        return chain(n)
    middle = [f"%%step wide_step_{i}\nw{i} = root + {i}" for i in range(n - 2)]
    return ["%%step root\nroot = 1", *middle, "%%step join\ntotal = " + " + ".join(f"w{i}" for i in range(n - 2))]


def diamonds(n):
    """Diamonds in a chain, every third one also ordered --after a step two diamonds back (an edge
    that skips layers, drawn dashed), and a long step name."""
    cells, last = ["%%step top\nd = 0"], "top"
    for i in range(1, (n - 1) // 3 + 1):
        after = f" --after left{i - 2}" if i % 3 == 0 and i > 2 else ""
        cells += [f"%%step left{i}\nl{i} = d + 1", f"%%step right{i}_with_a_rather_long_name\nr{i} = d + 2",
                  f"%%step bottom{i}{after}\nd = l{i} + r{i}"]
        last = f"bottom{i}"
    cells += [f"%%step tail{i}\nt{i} = d" for i in range(n - len(cells))]
    assert last and len(cells) == n
    return cells


SHAPES = {"chain": chain, "fan_out": fan_out, "diamonds": diamonds}


def boxes_and_edges(svg):
    """({step: (x, y, w, h)}, [(from, to, points, dashed)]) read back from the SVG's elements."""
    root = ET.fromstring(svg)
    boxes = {}
    for group in root.iter(f"{SVG}g"):
        rect = group.find(f"{SVG}rect")
        boxes[group.get("data-step")] = tuple(float(rect.get(key)) for key in ("x", "y", "width", "height"))
    edges = []
    for element in root.iter():
        if element.get("data-from") is None:
            continue
        if element.tag == f"{SVG}line":
            points = [(float(element.get("x1")), float(element.get("y1"))), (float(element.get("x2")), float(element.get("y2")))]
        else:
            points = path_points(element.get("d"))
        edges.append((element.get("data-from"), element.get("data-to"), points, element.get("stroke-dasharray") is not None))
    return boxes, edges


def path_points(d):
    """The corners of an `M x y V y H x ...` path."""
    points, token = [], ""
    commands = []
    for char in d + "E":
        if char.isalpha():
            if commands:
                commands[-1][1] = token
            commands.append([char, ""])
            token = ""
        else:
            token += char
    for command, value in commands[:-1]:
        if command == "M":
            points.append(tuple(map(float, value.split())))
        elif command == "V":
            points.append((points[-1][0], float(value)))
        elif command == "H":
            points.append((float(value), points[-1][1]))
    return points


def inside(point, box, margin=0.5):
    x, y = point
    bx, by, bw, bh = box
    return bx + margin < x < bx + bw - margin and by + margin < y < by + bh - margin


def on_segment_points(a, b, steps=40):
    return [(a[0] + (b[0] - a[0]) * k / steps, a[1] + (b[1] - a[1]) * k / steps) for k in range(steps + 1)]


@pytest.mark.parametrize("size", [1, 5, 60, 200])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_dag_has_no_overlapping_boxes_and_every_edge_runs_between_its_boxes_outside_the_others(shape, size):
    plan = plan_of(SHAPES[shape](size))
    boxes, edges = boxes_and_edges(display.dag_svg(plan))
    assert sorted(boxes) == sorted(step.name for step in plan.steps)
    for (a, (ax, ay, aw, ah)), (b, (bx, by, bw, bh)) in itertools.combinations(boxes.items(), 2):
        assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay, f"{a} and {b} overlap"
    expected = {(up, step.name, up not in step.inferred) for step in plan.steps for up in step.upstream}
    assert {(source, target, dashed) for source, target, _, dashed in edges} == expected
    for source, target, points, _ in edges:
        (sx, sy, sw, sh), (tx, ty, tw, _) = boxes[source], boxes[target]
        assert points[0][1] == sy + sh and sx <= points[0][0] <= sx + sw, f"{source}->{target} leaves its box"
        assert points[-1][1] == ty and tx <= points[-1][0] <= tx + tw, f"{source}->{target} ends on its box"
        for a, b in zip(points, points[1:]):
            for point in on_segment_points(a, b):
                crossed = [name for name, box in boxes.items() if inside(point, box)]
                assert not crossed, f"{source}->{target} crosses {crossed}"
    width = float(ET.fromstring(display.dag_svg(plan)).get("width"))
    assert width <= 1300  # a wide layer wraps: the picture stays about a screen wide


@pytest.mark.parametrize("size", [1, 5, 60, 200])
@pytest.mark.parametrize("shape", SHAPES)
def test_show_as_text_fits_100_columns_and_names_every_step(shape, size):
    plan = plan_of(SHAPES[shape](size))
    text = repr(display.PlanView(plan))
    assert max(map(len, text.splitlines())) <= 100
    for step in plan.steps:
        assert step.name in text


def test_the_demos_step_table_fits_100_columns_and_keeps_each_input_whole_where_it_fits():
    pipeline, _ = notebook.load(os.path.join(REPO, "notebooks", "demo_wine.ipynb"))
    text = repr(pipeline.show())
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100
    assert "X_train <- prepare," in text and "frame <- load" in text
    assert lines[1].split() == ["step", "after", "(*", "inputs", "(var", "<-", "step)", "params", "outputs", "metrics"]


def test_show_in_a_notebook_has_a_legend_for_inferred_and_after_edges():
    page = display.PlanView(plan_of(diamonds(12)))._repr_html_()
    assert "data flows (inferred)" in page and "--after (no data needed)" in page
    assert "stroke-dasharray" in page.split("kfm-legend")[0]  # the --after edges in the picture are dashed


def a_run(states, metrics=None, outputs=None):
    steps = {}
    for name, state in states.items():
        step = StepRun(name, state=state, started=time.time() - 3 if state != "PENDING" else None)
        step.finished = time.time() if state in ("SUCCEEDED", "FAILED") else None
        step.metrics = (metrics or {}).get(name, {})
        steps[name] = step
    return Run("r-1", "generated", "local", steps, {}, run_dir="/tmp/runs/r-1", state="RUNNING")


def test_a_one_step_run_and_check_speak_in_the_singular():
    out = io.StringIO()
    display.TextProgress(out).start(a_run({"only": "PENDING"}))
    assert out.getvalue() == "run r-1: 1 step\n"
    assert display.check_text(plan_of(chain(1))) == "pipeline generated: 1 step, no problems found."


def test_the_run_table_as_text_fits_100_columns():
    run = a_run({f"step_with_a_long_name_{i}": "SUCCEEDED" for i in range(3)},
                metrics={"step_with_a_long_name_0": {f"metric_number_{i}": i / 7 for i in range(12)}})
    text = display.run_text(run)
    assert max(map(len, text.splitlines())) <= 100 and "metric_number_11=1.571" in text


class Published:
    """What NotebookProgress hands IPython's display machinery, recorded instead of sent."""

    def __init__(self, monkeypatch):
        import IPython.display

        self.messages = []
        monkeypatch.setattr(IPython.display, "display", self.display)

    def display(self, data, raw, display_id):
        assert raw and display_id is True
        handle = Handle(self, len([m for m in self.messages if m[0] == "display"]))
        self.messages.append(("display", handle.number, data))
        return handle


class Handle:
    def __init__(self, published, number):
        self.published, self.number = published, number

    def update(self, data, raw):
        self.published.messages.append(("update", self.number, data))


def test_changes_are_coalesced_to_a_few_patches_a_second_and_the_final_state_is_always_sent(monkeypatch):
    published = Published(monkeypatch)
    names = [f"s{i}" for i in range(50)]
    run = a_run(dict.fromkeys(names, "PENDING"))
    progress = display.NotebookProgress()
    progress.start(run)
    started = time.monotonic()
    for name in names:  # 100 state changes and 50 lines at once: no more than one patch goes out
        run.steps[name].state, run.steps[name].started = "RUNNING", time.time()
        progress.update(run)
        progress.output(name, "stdout", f"hello from {name}")
        run.steps[name].state, run.steps[name].finished = "SUCCEEDED", time.time()
        progress.update(run)
    assert time.monotonic() - started < display.UPDATE_SECONDS  # (else the loop was too slow to tell)
    assert [kind for kind, *_ in published.messages] == ["display", "display"]
    time.sleep(display.UPDATE_SECONDS)
    progress.update(run)  # the next change after the interval carries everything held back
    patch = published.messages[-1]
    assert patch[:2] == ("update", 1)
    data = json.loads(patch[2]["text/html"].split(",", 1)[1].rsplit(")", 1)[0])
    assert sorted(row[0] for row in data["s"]) == list(range(50)) and {row[1] for row in data["s"]} == {"done"}
    assert [line[1] for line in data["l"]] == [f"hello from {name}\n" for name in names]
    progress.update(run)  # nothing changed: nothing sent
    assert published.messages[-1] is patch
    run.state = "SUCCEEDED"
    progress.finish(run)
    view, patch_cleared = published.messages[-2:]
    assert view[:2] == ("update", 0) and "<script" not in view[2]["text/html"] and "50/50 steps ended" in view[2]["text/html"]
    assert patch_cleared == ("update", 1, {"text/plain": ""})


def test_the_live_view_draws_the_dag_by_state_and_keeps_a_failed_steps_error_open(monkeypatch):
    published = Published(monkeypatch)
    plan = plan_of(["%%step a\nx = 1", "%%step b\ny = x", "%%step c --after a\nz = 1"])
    run = a_run({"a": "SUCCEEDED", "b": "FAILED", "c": "PENDING"}, metrics={"a": {"acc": 0.5}})
    run.steps["b"].error = "Traceback ...\nZeroDivisionError: division by zero"
    run.steps["c"].state, run.state = "SKIPPED", "FAILED"
    progress = display.NotebookProgress(plan)
    progress.start(run)
    progress.output("a", "stdout", "<b>not markup</b>")
    progress.finish(run)
    page = published.messages[-2][2]["text/html"]
    boxes = {name: state for name, state in
             [(part.split("data-step='")[1].split("'")[0], part.split("class='")[1].split("'")[0])
              for part in page.split("<g")[1:] if "data-step" in part]}
    assert boxes == {"a": "kfm-done", "b": "kfm-failed", "c": "kfm-skipped"}
    assert "<details open><summary>log (2 lines)</summary><pre>Traceback ...\nZeroDivisionError" in page
    assert "&lt;b&gt;not markup&lt;/b&gt;" in page and "acc=0.5" in page
    assert published.messages[-2][2]["text/plain"] == display.run_text(run)


def iopub_until_idle(kernel, msg_id, timeout=300):
    """Every iopub message the request `msg_id` caused, until the kernel is idle again."""
    messages = []
    while True:
        message = kernel.client.get_iopub_msg(timeout=timeout)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(message)
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return messages


def wire_size(message):
    """About what the message weighs on the wire: its four JSON frames."""
    return sum(len(json.dumps(message[part], default=str)) for part in ("header", "parent_header", "metadata", "content"))


def test_a_500_step_run_sends_under_2_mb_to_a_notebook_front_end(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        assert kernel.run("%load_ext kfmagic\n%pipeline init big", cell_id="c0")[0] == "ok"
        register = (
            "ip = get_ipython()\nip.run_cell_magic('step', 'root', 'x = 1')\n"
            "for i in range(1, 500):\n"
            "    ip.run_cell_magic('step', f's{i}', f'y{i} = x + {i}\\nprint(\"step {i} says\", y{i})')\n"
        )
        assert kernel.run(register, cell_id="c1")[0] == "ok"
        started = time.monotonic()
        messages = iopub_until_idle(kernel, kernel.send("run = %pipeline run", cell_id="c2"))
        took = time.monotonic() - started
    finally:
        kernel.shutdown()
    total = sum(map(wire_size, messages))
    kinds = [message["msg_type"] for message in messages]
    print(f"500-step run: {total} bytes in {len(messages)} iopub messages over {took:.1f}s")
    assert total < 2_000_000
    assert kinds.count("display_data") == 2 and "stream" not in kinds and "error" not in kinds
    updates = [message["content"] for message in messages if message["msg_type"] == "update_display_data"]
    assert len(updates) <= took / display.UPDATE_SECONDS + 2
    view_id = next(m["content"]["transient"]["display_id"] for m in messages if m["msg_type"] == "display_data")
    *patches, final_view, cleared = updates
    assert all(patch["transient"]["display_id"] != view_id and len(json.dumps(patch)) < 64_000 for patch in patches)
    page = final_view["data"]["text/html"]
    assert final_view["transient"]["display_id"] == view_id and "<script" not in page
    assert page.count("class='kfm-done'") == 2 * 500  # every row and every box of the DAG
    assert "step 499 says 500" in page and "500/500 steps ended" in page
    assert cleared["data"] == {"text/plain": ""}


def test_a_front_end_without_cell_ids_gets_plain_text_lines(tmp_path):
    # nbclient (and papermill, which runs on it) sends no cell ids: no HTML, a line per change.
    nb = execute(make_notebook([
        "%load_ext kfmagic", "%%step a\nx = 1\nprint('hello from a')", "%%step b\ny = x + 1", "run = %pipeline run",
    ]), tmp_path)
    outputs = nb.cells[-1].outputs
    assert {output.output_type for output in outputs} == {"stream"}
    text = "".join(output.text for output in outputs)
    assert "[a] hello from a" in text and "[b] done" in text and "<" not in text.replace("<-", "")


def test_the_progress_follows_the_front_end(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        code = "from kfmagic.display import default_progress\nprint(type(default_progress()).__name__)"
        assert kernel.run(code, cell_id="from-jupyterlab") == ("ok", "NotebookProgress\n")
        assert kernel.run(code) == ("ok", "TextProgress\n")
    finally:
        kernel.shutdown()


def test_a_run_with_no_steps_yet_shows_an_empty_table():
    """A cluster run read before its tasks appear (`kfmagic cancel` right after submitting)."""
    run = Run("r-1", "generated", "kfp", {}, {}, state="PENDING")
    assert display.run_text(run).splitlines()[1:] == ["step  state  time  metrics", "----  -----  ----  -------"]
