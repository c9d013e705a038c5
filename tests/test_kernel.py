"""The magics in a real ipykernel driven by nbclient: what a user sees, and what must not change."""

import os
import re
import time

import pytest

PRELUDE = "%load_ext kfmagic"


def test_marked_cells_run_as_plain_cells_and_the_run_leaves_the_kernel_alone(run_cells):
    out = run_cells([
        PRELUDE,
        "%%prelude\nimport math",
        "%%params\nscale = 2",
        "%%step load\ndata = [1, 2, 3]\nprint('loaded', len(data))\nlen(data)",
        "%%step double --metrics total\ndoubled = [x * scale for x in data]\ntotal = sum(doubled)",
        "%%step roots\nroots = [math.sqrt(x) for x in data]",
        "%%step report --after double\nprint('roots', roots)",
        "def user_vars(*skip):\n"
        "    hidden = get_ipython().user_ns_hidden\n"
        "    return {k: (id(v), repr(v)) for k, v in globals().items() if not k.startswith('_') and k not in hidden and k not in skip}\n"
        "snapshot = user_vars()",
        "run = %pipeline run --param scale=5",
        "print(user_vars('run', 'snapshot') == snapshot, run.state, run.metrics, run.load('roots')[1], total)",
    ])
    assert "loaded 3" in out[3] and "3" in out[3].splitlines()[-1]  # output and last value, as a plain cell
    assert "[load] loaded 3" in out[8]
    assert "[report] roots [1.0, 1.4142135623730951, 1.7320508075688772]" in out[8]
    assert "True SUCCEEDED {'double': {'total': 30.0}} 1.4142135623730951 12" in out[9]


def test_errors_in_a_step_cell_show_only_the_users_frames(kernel):
    kernel.run(PRELUDE)
    status, shown = kernel.run("%%step a\nx = 1\n\ny = x / 0")
    assert status == "error" and "ZeroDivisionError" in shown
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert "line 4" in plain and "y = x / 0" in plain
    assert "Cell In[2], line 4" in plain and plain.count("\nCell ") == 1  # one frame: the user's cell
    assert "kfmagic" not in plain and "Traceback" in plain


def _refused(kernel, line, message):
    status, shown = kernel.run(line)
    assert status == "error" and message in shown and "Traceback" not in shown, shown


def test_a_bad_magic_line_is_one_message_and_changes_nothing(kernel):
    kernel.run(PRELUDE)
    kernel.run("%%step a\nx = 1")
    _refused(kernel, "%%step Bad\nz = 1", "'Bad' is not a valid name")
    _refused(kernel, "%%step b --after\nz = 1", "argument --after: expected at least one argument")
    _refused(kernel, "%%step b --frobnicate\nz = 1", "unrecognized arguments: --frobnicate")
    _refused(kernel, "%%params\nz = 1\nrate = compute()", "%%params line 3: `rate = compute()`")
    status, shown = kernel.run("print('z' in globals(), [c.spec.name for c in __import__('kfmagic').pipeline().cells])")
    assert shown.strip() == "False ['a']"
    _refused(kernel, "%pipeline frobnicate", "invalid choice: 'frobnicate'")
    _refused(kernel, "%pipeline run --workers many", "invalid int value: 'many'")
    _refused(kernel, "%pipeline run --param nope=1", "--param nope: no such parameter")
    _refused(kernel, "%pipeline remove ghost", "no step named 'ghost'")


def test_help_is_the_reference(kernel):
    kernel.run(PRELUDE)
    _, shown = kernel.run("print(get_ipython().find_line_magic('pipeline').__doc__)")
    assert "%pipeline run [--param NAME=VALUE]" in shown and "remove" in shown
    _, shown = kernel.run("print(get_ipython().find_cell_magic('step').__doc__)")
    assert "--after STEP" in shown and "Every cell marked with the same NAME is a part" in shown


def test_cell_ids_make_reruns_replace_and_unmarking_removes(kernel):
    kernel.run(PRELUDE)
    kernel.run("%%step a\nx = 1", cell_id="cell-a")
    kernel.run("%%step b\ny = x + 1", cell_id="cell-b")
    kernel.run("%%step a\nx = 10", cell_id="cell-a")  # edited and re-run
    _, shown = kernel.run("print([c.spec.source for c in __import__('kfmagic').pipeline().cells])")
    assert shown.strip() == "['%%step a\\nx = 10', '%%step b\\ny = x + 1']"
    kernel.run("y = x + 1", cell_id="cell-b")  # the magic was deleted from the cell
    _, shown = kernel.run("print([c.spec.name for c in __import__('kfmagic').pipeline().cells])")
    assert shown.strip() == "['a']"


def test_reloading_the_extension_keeps_the_pipeline_and_one_transformer(kernel):
    kernel.run(PRELUDE)
    kernel.run("%%step a\nx = 1")
    kernel.run("%reload_ext kfmagic")
    kernel.run("%reload_ext kfmagic")
    _, shown = kernel.run(
        "import kfmagic, kfmagic.magics as m\n"
        "print(get_ipython().input_transformer_manager.line_transforms.count(m.mark_cells), len(kfmagic.pipeline().cells))"
    )
    assert shown.strip() == "1 1"


def test_a_name_from_an_unmarked_cell_is_explained(kernel):
    kernel.run(PRELUDE)
    kernel.run("threshold = 0.5")
    status, shown = kernel.run("%%step a\nflag = threshold > 0.1")
    assert status == "ok"
    status, shown = kernel.run("%pipeline check")
    assert status == "error"
    assert "Step 'a' reads 'threshold', but no step, prelude or parameter provides it." in shown
    assert "The kernel has it from In [2], a cell that is not part of the pipeline" in shown


def test_failed_run_is_one_message_and_keeps_the_kernel_and_finished_outputs(kernel):
    kernel.run(PRELUDE)
    kernel.run("%%step a\nx = 1")
    kernel.run("%%step b\ntry:\n    y = x / 0\nexcept NameError:\n    pass")
    status, shown = kernel.run("run = %pipeline run")
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert status == "error" and "Step 'b' failed: ZeroDivisionError: division by zero" in plain
    assert 'File "step b, In [3]", line 3' in plain  # the step's traceback, on the cell's lines
    _, shown = kernel.run("print(__import__('kfmagic').pipeline().last_run.load('x'), 1 + 1)")
    assert shown.strip() == "1 2"


def test_ctrl_c_stops_the_run_and_its_processes(kernel, tmp_path):
    kernel.run(PRELUDE)
    kernel.run("%%step slow\nimport os, time\nif os.path.exists('go'):  # in the run, not in the kernel\n"
               "    open('pid', 'w').write(str(os.getpid()))\n    time.sleep(60)")
    (tmp_path / "go").touch()
    msg_id = kernel.send("run = %pipeline run")
    deadline = time.time() + 30
    while not (tmp_path / "pid").exists() and time.time() < deadline:
        time.sleep(0.1)
    step_pid = int((tmp_path / "pid").read_text())
    kernel.manager.interrupt_kernel()
    status, shown = kernel.collect(msg_id)
    assert status == "error" and "interrupted: its step processes were stopped" in shown
    assert "Traceback" not in shown
    assert step_pid != kernel.manager.provisioner.process.pid
    with pytest.raises(ProcessLookupError):
        os.kill(step_pid, 0)
    _, shown = kernel.run("print(__import__('kfmagic').pipeline().last_run.state)")
    assert shown.strip() == "CANCELED"


def test_values_of_prelude_classes_load_as_the_kernels_classes(run_cells):
    out = run_cells([
        PRELUDE,
        "%%prelude\nclass Box:\n    def __init__(self, v):\n        self.v = v",
        "%%step make\nbox = Box(3)",
        "run = %pipeline run\nloaded = run.load('box')\nprint(isinstance(loaded, Box), loaded.v)",
    ])
    assert out[-1].strip().endswith("True 3")


def _registered(kernel):
    """(step or kind, label) of every registered cell, in notebook order."""
    _, shown = kernel.run("import kfmagic\nprint([(c.spec.name or c.spec.kind, c.label) for c in kfmagic.pipeline().cells])")
    return shown.strip()


def test_remove_and_reset_change_what_a_run_runs(kernel):
    kernel.run(PRELUDE + "\n%pipeline init edits --experiment exp")
    kernel.run("%%step a\nx = 1")
    kernel.run("%%step b\ny = x + 1")
    kernel.run("%%step b\nprint('second part of b')")
    kernel.run("%%step c\nz = x * 10")
    assert _registered(kernel) == "[('a', 'In [2]'), ('b', 'In [3]'), ('b', 'In [4]'), ('c', 'In [5]')]"
    assert kernel.run("%pipeline remove b") == ("ok", "")
    assert _registered(kernel) == "[('a', 'In [2]'), ('c', 'In [5]')]"  # every part of b, nothing else
    _, shown = kernel.run("run = %pipeline run\nprint(list(run.steps), run.state, run.load('z'))")
    assert shown.strip().endswith("['a', 'c'] SUCCEEDED 10")

    assert kernel.run("%pipeline reset") == ("ok", "")
    _, shown = kernel.run("p = kfmagic.pipeline()\nprint(p.cells, p.name, p.experiment, p.last_run, x, z)")
    assert shown.strip() == "[] edits exp None 1 10"  # name, experiment and the kernel's variables stay
    status, shown = kernel.run("%pipeline run")
    assert status == "error" and "The pipeline has no steps: mark a cell with `%%step NAME`" in shown
    kernel.run("%%step fresh\ny = 2")
    _, shown = kernel.run("run = %pipeline run\nprint(list(run.steps), run.load('y'))")
    assert shown.strip().endswith("['fresh'] 2")


@pytest.mark.parametrize("bad, message", [
    ("%%step a --frobnicate\nx = 2", "unrecognized arguments: --frobnicate"),
    ("%%step Bad\nx = 2", "'Bad' is not a valid name"),
    ("%%step a --after\nx = 2", "argument --after: expected at least one argument"),
    ("%%params\nx = compute()", "%%params line 2: `x = compute()`"),
    ("%%stepp a\nx = 2", "Cell magic `%%stepp` not found"),
])
def test_a_bad_magic_line_in_a_cell_with_an_id_keeps_its_registration(kernel, bad, message):
    kernel.run(PRELUDE)
    kernel.run("%%step a\nx = 1", cell_id="cell-a")
    kernel.run("%%step b\ny = x + 1", cell_id="cell-b")
    status, shown = kernel.run(bad, cell_id="cell-a")
    assert status == "error" and message in shown
    _, shown = kernel.run("print([(c.spec.source, c.label, c.key) for c in __import__('kfmagic').pipeline().cells], x)")
    assert shown.strip() == "[('%%step a\\nx = 1', 'In [2]', 'id:cell-a'), ('%%step b\\ny = x + 1', 'In [3]', 'id:cell-b')] 1"
