"""One step as the runtime runs it, in this process: `runtime.run_step` on a spec as the backends
write it, and what it leaves in the step's folder (result.json, one file per value) and says.

The same behaviour is shown end to end by the local runs of test_local_run.py; here the step's
contract is checked directly, without starting a process for each case.
"""

import hashlib
import json
import os
import pickle
import sys

import pytest

from kfmagic import component, runtime, serde
from kfmagic.syntax import parse_cell


def part(text, label="cell 1"):
    """A spec part ({code, source, label}) for a marked cell, as the plan gives it."""
    spec = parse_cell(text)
    return {"code": spec.code, "source": spec.source, "label": label}


def spec_of(out_dir, *cells, step="s", prelude=(), **fields):
    """A step's spec (runtime.py's docstring lists its fields) running `cells` (bodies of `%%step`)."""
    return {
        "step": step,
        "prelude": [part(f"%%prelude\n{text}", f"cell {number}") for number, text in enumerate(prelude, 1)],
        "parts": [part(f"%%step {step}\n{text}", f"cell {number}") for number, text in enumerate(cells, 1)],
        "params": {}, "inputs": {}, "producers": {}, "outputs": [], "keep": [], "metrics": [], "needed_by": {},
        "out_dir": str(out_dir),
        **fields,
    }


@pytest.fixture(autouse=True)
def kept_main(monkeypatch):
    """Whatever a test does to sys.modules['__main__'] (new_namespace replaces it) is undone."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


def run(spec, **kwargs):
    """(exit code, the result the step wrote)."""
    code = runtime.run_step(spec, **kwargs)
    with open(os.path.join(spec["out_dir"], runtime.RESULT_FILE)) as file:
        return code, json.load(file)


def test_a_step_loads_its_inputs_runs_its_cells_and_saves_what_later_steps_read(tmp_path):
    first = spec_of(tmp_path / "a", "rows = [1, 2]\nnote = 'made by a'", step="a", outputs=["rows"], keep=["note"],
                    needed_by={"rows": ["b", "c"]})
    assert run(first) == (0, {
        "state": "SUCCEEDED", "error": None, "metrics": {}, "skipped": {}, "random": [],
        "saved": {
            "rows": {"type": "list", "bytes": os.path.getsize(tmp_path / "a" / "outputs" / "rows.pkl"),
                     "digest": "sha256:" + hashlib.sha256((tmp_path / "a" / "outputs" / "rows.pkl").read_bytes()).hexdigest()},
            "note": {"type": "str", "bytes": os.path.getsize(tmp_path / "a" / "outputs" / "note.pkl")},
        },
    })
    rows = runtime.output_path(str(tmp_path / "a"), "rows")
    second = spec_of(tmp_path / "b", "rows.append(3)\ntotal = sum(rows)", step="b",
                     inputs={"rows": rows}, producers={"rows": "a"}, keep=["rows", "total"])
    code, result = run(second)
    assert code == 0 and result["state"] == "SUCCEEDED" and set(result["saved"]) == {"rows", "total"}
    assert serde.load(runtime.output_path(str(tmp_path / "b"), "total")) == 6
    assert serde.load(runtime.output_path(str(tmp_path / "b"), "rows")) == [1, 2, 3]
    assert serde.load(rows) == [1, 2]  # the producer's file is not changed by the step that changed the value
    assert oct((tmp_path / "a" / "outputs").stat().st_mode & 0o777) == "0o700"
    assert {oct(path.stat().st_mode & 0o777) for path in (tmp_path / "a").rglob("*") if path.is_file()} == {"0o600"}
    assert not list(tmp_path.rglob("*.partial"))


def test_a_step_records_the_global_random_generators_its_code_left_elsewhere(tmp_path):
    drew = spec_of(tmp_path / "a", "import random\nimport numpy as np\nx = (random.random(), np.random.rand())", step="a")
    assert run(drew)[1]["random"] == ["random", "numpy"]
    own = spec_of(tmp_path / "b", "import numpy as np\nx = np.random.default_rng(0).random()", step="b")
    assert run(own)[1]["random"] == []  # a generator of its own moves no global one


def test_a_last_value_whose_repr_fails_is_not_shown_and_the_step_goes_on_as_in_the_kernel(tmp_path, capsys):
    # PythonDataScienceHandbook's `display` class evaluates, when shown, the names it was given
    shown = component.CellOutput()
    helper = ("class display:\n    def __init__(self, *names):\n        self.names = names\n\n"
              "    def __repr__(self):\n        return ', '.join(repr(eval(n)) for n in self.names)")
    code, result = run(spec_of(tmp_path, helper, "x = 1\ndisplay('x', 'missing')"), display=shown.display)
    assert (code, result["state"]) == (0, "SUCCEEDED")
    assert "NameError in the repr of a display: name 'missing' is not defined" in capsys.readouterr().err


def test_parameters_are_set_before_the_prelude_runs(tmp_path):
    spec = spec_of(tmp_path, "got = seed_copy", prelude=["seed_copy = SEED"], params={"SEED": 7}, keep=["got"])
    assert run(spec)[1]["state"] == "SUCCEEDED"
    assert serde.load(runtime.output_path(str(tmp_path), "got")) == 7


def test_a_warm_step_keeps_what_its_prelude_made_and_only_fills_the_parameters_it_lacks(tmp_path):
    namespace = runtime.new_namespace()
    runtime.run_prelude(namespace, {"SEED": 7}, [part("%%prelude\nSEED = SEED + 1\nstarted = 'once'")])
    spec = spec_of(tmp_path, "got = (SEED, OTHER, started)", keep=["got"], params={"SEED": 7, "OTHER": 2},
                   prelude=["raise RuntimeError('the prelude ran twice')"])
    code, result = run(spec, namespace=namespace, warm=True)
    assert (code, result["state"]) == (0, "SUCCEEDED"), result["error"]
    assert serde.load(runtime.output_path(str(tmp_path), "got")) == (8, 2, "once")


def test_a_failing_cell_fails_the_step_with_the_traceback_on_the_cells_own_lines(tmp_path, capsys):
    spec = spec_of(tmp_path, "x = 1", "y = x + 1\n\nz = y / 0", outputs=["z"])
    code, result = run(spec)
    assert (code, result["state"], result["saved"]) == (1, "FAILED", {})
    error = result["error"]
    assert 'File "step s, cell 2", line 4, in <module>\n    z = y / 0' in error
    assert error.startswith("Traceback (most recent call last):\n  File ")
    assert error.endswith("ZeroDivisionError: division by zero\n")
    assert capsys.readouterr().err == error  # said once, as it is


def test_a_failing_prelude_names_the_prelude_cell_and_line(tmp_path):
    code, result = run(spec_of(tmp_path, "x = 1", prelude=["import os", "y = 1\nraise ValueError('bad prelude')"]))
    assert (code, result["state"]) == (1, "FAILED")
    assert 'File "prelude, cell 2", line 3, in <module>\n    raise ValueError(\'bad prelude\')' in result["error"]


def test_the_last_expression_of_a_cell_is_displayed_unless_silenced(tmp_path):
    shown = []
    spec = spec_of(tmp_path, "x = 21\nx * 2", "x;", "None", "print('printed')", "display('shown')")
    assert run(spec, display=shown.append)[1]["state"] == "SUCCEEDED"
    assert shown == [42, "shown"]  # display() in a cell is the caller's too


def test_without_a_front_end_display_prints_text_and_last_values_are_not_shown(tmp_path, capsys):
    spec = spec_of(tmp_path, "display('a', 3)\n41 + 1")
    assert run(spec)[1]["state"] == "SUCCEEDED"
    assert capsys.readouterr().out == "'a'\n3\n"


@pytest.mark.parametrize("needed_by, why", [
    ({"maybe": ["b", "c"]}, "but step(s) b, c read it."),
    ({}, "but it is declared with --outputs/--metrics."),
])
def test_an_output_left_unassigned_fails_the_step_saying_who_needs_it(tmp_path, needed_by, why):
    spec = spec_of(tmp_path, "if False:\n    maybe = 1", outputs=["maybe"], needed_by=needed_by)
    code, result = run(spec)
    assert (code, result["state"]) == (1, "FAILED")
    assert result["error"] == (
        f"Step 's' did not assign 'maybe', {why} Make sure every path through the step's code assigns it."
    )


def test_a_kept_value_that_cannot_be_saved_is_skipped_with_the_reason(tmp_path):
    spec = spec_of(
        tmp_path,
        "import threading\nclass Bad:\n    def __reduce__(self):\n        raise TypeError('no copies')\n"
        "gen = (n for n in range(3))\nbad = Bad()\nlock = [threading.Lock()]\ncount = 3",
        keep=["gen", "bad", "lock", "count"],
    )
    code, result = run(spec)
    assert (code, result["state"], list(result["saved"])) == (0, "SUCCEEDED", ["count"])
    assert result["skipped"] == {
        "gen": "it is a generator (a paused computation)",
        "bad": "__main__.Bad cannot be pickled (cloudpickle: TypeError: no copies; dill: TypeError: no copies)",
        "lock": "it holds a lock (_thread.lock)",
    }
    assert not (tmp_path / "outputs" / "gen.pkl").exists() and not (tmp_path / "outputs" / "bad.pkl").exists()


def test_a_value_that_must_be_passed_on_and_cannot_be_fails_the_step_saying_what_to_pass(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    opened = spec_of(tmp_path / "a", f"log = {{'handle': open({str(tmp_path / 'notes.txt')!r}, 'a')}}", outputs=["log"])
    code, result = run(opened)
    assert (code, result["state"]) == (1, "FAILED")
    assert result["error"] == (
        "Step 's' cannot pass on 'log' (of type dict): it holds an open file (_io.TextIOWrapper), a live resource of "
        "the step's own process that a copy in another step would not be. Pass what it stands for instead (a path, "
        "a URL, settings, the data read from it; for a generator, a list of what it yields) and open or create it "
        "again in the step that uses it."
    )
    assert (tmp_path / "notes.txt").read_text() == "precious"
    generator = spec_of(tmp_path / "b", "numbers = (n for n in range(3))", outputs=["numbers"])
    assert run(generator)[1]["error"].startswith(
        "Step 's' cannot pass on 'numbers' (of type generator): it is a generator (a paused computation), a live resource"
    )
    unpicklable = spec_of(tmp_path / "c", "class Bad:\n    def __reduce__(self):\n        raise TypeError('no')\nbad = Bad()",
                          outputs=["bad"])
    assert run(unpicklable)[1]["error"] == (
        "Step 's' cannot save 'bad' (of type __main__.Bad): neither cloudpickle nor dill can serialize it "
        "(cloudpickle: TypeError: no; dill: TypeError: no). Recreate it in the step that uses it, or pass "
        "something that pickles instead (a path, a config, the data it holds)."
    )


def test_a_value_that_cannot_be_written_fails_the_step_naming_the_folder(tmp_path, capsys):
    (tmp_path / "outputs" / "x.pkl.partial").mkdir(parents=True)  # where the value would be written
    code, result = run(spec_of(tmp_path, "x = 1", outputs=["x"]))
    assert (code, result["state"]) == (1, "FAILED")
    assert result["error"] == (
        f"Step 's' could not save 'x' (of type int) in {tmp_path}: Is a directory. Free space there (or move the "
        "notebook's .kfmagic/ to a larger disk) and run again; outputs of steps that finished are kept."
    )
    assert capsys.readouterr().err == result["error"] + "\n"  # one line, no traceback


def test_metrics_are_numbers_reported_as_floats(tmp_path):
    code, result = run(spec_of(tmp_path, "accuracy = 0.9\nepochs = 3", metrics=["accuracy", "epochs"]))
    assert code == 0 and result["metrics"] == {"accuracy": 0.9, "epochs": 3.0}
    assert type(result["metrics"]["epochs"]) is float


@pytest.mark.parametrize("value, said", [
    ("True", "got a bool (True)"),
    ("'x' * 200", f"got a str ({'x' * 200!r:.80})"),
    ("[0.5]", "got a list ([0.5])"),
])
def test_a_metric_that_is_not_a_number_fails_the_step(tmp_path, value, said):
    code, result = run(spec_of(tmp_path, f"score = {value}", metrics=["score"]))
    assert (code, result["state"], result["metrics"]) == (1, "FAILED", {})
    assert result["error"] == f"Step 's': metric 'score' must be a number, {said}. Report one number per metric."


def test_a_damaged_input_fails_the_step_naming_it_its_producer_and_the_fix(tmp_path):
    value = tmp_path / "x.pkl"
    value.write_bytes(b"")
    named = spec_of(tmp_path / "b", "y = x", inputs={"x": str(value)}, producers={"x": "a"})
    code, result = run(named)
    assert (code, result["state"]) == (1, "FAILED")
    assert result["error"] == (
        f"Step 's' cannot load its input 'x' (saved by step 'a'): the file is empty ({value}). "
        "Run the pipeline again to remake it."
    )
    unnamed = spec_of(tmp_path / "c", "y = x", inputs={"x": str(tmp_path / "gone.pkl")})
    assert run(unnamed)[1]["error"].startswith("Step 's' cannot load its input 'x': the file is missing (")


def test_an_input_made_with_a_library_the_step_lacks_says_so(tmp_path):
    value = tmp_path / "x.pkl"
    value.write_bytes(pickle.dumps(json.JSONDecodeError).replace(b"json", b"jsom"))
    code, result = run(spec_of(tmp_path / "b", "y = x", inputs={"x": str(value)}, producers={"x": "a"}))
    assert (code, result["state"]) == (1, "FAILED")
    assert result["error"] == (
        "Step 's' cannot load its input 'x' (saved by step 'a'): ModuleNotFoundError: No module named 'jsom'. "
        "Its producer saved it with a library this step's environment lacks, or a different version."
    )


def test_a_result_that_cannot_be_written_is_one_line_and_exit_status_1(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "result.json.partial").mkdir()  # the result is written aside first
    assert runtime.run_step(spec_of(tmp_path / "s", "x = 1")) == 1
    assert capsys.readouterr().err == f"Step 's' could not write its result in {tmp_path / 's'}: Is a directory.\n"


def test_the_preludes_classes_and_functions_are_saved_by_name(tmp_path):
    prelude = "class Config:\n    rate = 0.1\ndef helper(v):\n    return v * 2"
    spec = spec_of(tmp_path, "def local(v):\n    return v\ncfg = Config()\nfs = [helper, local]",
                   prelude=[prelude], outputs=["cfg", "fs"])
    assert run(spec)[1]["state"] == "SUCCEEDED"
    consumer = runtime.new_namespace()  # another step: its prelude defines the same names anew
    runtime.run_prelude(consumer, {}, [part(f"%%prelude\n{prelude}")])
    cfg = serde.load(runtime.output_path(str(tmp_path), "cfg"), consumer)
    helper, local = serde.load(runtime.output_path(str(tmp_path), "fs"), consumer)
    assert type(cfg) is consumer["Config"] and helper is consumer["helper"]
    assert local(5) == 5 and local is not consumer.get("local")  # defined in the step: saved as it is


def test_the_step_runs_as_main_and_the_callers_main_is_back_afterwards(tmp_path):
    before = sys.modules["__main__"]
    spec = spec_of(tmp_path, "import sys\nname = __name__\nsame = sys.modules['__main__'].__dict__ is globals()",
                   keep=["name", "same"])
    assert run(spec)[1]["state"] == "SUCCEEDED"
    assert sys.modules["__main__"] is before
    assert serde.load(runtime.output_path(str(tmp_path), "name")) == "__main__"
    assert serde.load(runtime.output_path(str(tmp_path), "same")) is True


@pytest.fixture
def fresh_shell():
    """The step's IPython shell is a process-wide singleton: one per test, gone after it."""
    from IPython.core.interactiveshell import InteractiveShell

    yield
    InteractiveShell.clear_instance()


def test_shell_and_magic_lines_run_in_the_steps_own_namespace(tmp_path, monkeypatch, fresh_shell):
    monkeypatch.setenv("KFM_RUNTIME_TEST", "unset")  # %env below changes this process's environment
    spec = spec_of(tmp_path, "listing = !echo a b\n%env KFM_RUNTIME_TEST=1\nimport os\nenv = os.environ['KFM_RUNTIME_TEST']",
                   keep=["listing", "env"])
    code, result = run(spec)
    assert (code, result["state"]) == (0, "SUCCEEDED"), result["error"]
    assert serde.load(runtime.output_path(str(tmp_path), "listing")) == ["a b"]
    assert serde.load(runtime.output_path(str(tmp_path), "env")) == "1"


def test_an_error_in_a_magic_line_fails_the_step(tmp_path, fresh_shell):
    code, result = run(spec_of(tmp_path, "%time x = 1 / 0\ny = 2", keep=["y"]))
    assert (code, result["state"]) == (1, "FAILED") and result["saved"] == {}
    assert result["error"].endswith("ZeroDivisionError: division by zero\n")


def test_a_script_run_with_percent_run_that_fails_fails_the_step(tmp_path, fresh_shell):
    script = tmp_path / "broken.py"
    script.write_text("raise KeyError('from the script')\n")
    code, result = run(spec_of(tmp_path / "s", f"%run {script}\ny = 2", keep=["y"]))
    assert (code, result["state"]) == (1, "FAILED") and result["saved"] == {}
    assert result["error"].endswith("KeyError: 'from the script'\n")


def test_line_magics_bind_names_in_the_step_write_no_history_and_need_no_gui(tmp_path, fresh_shell):
    cells = "%matplotlib inline\n%time y = 2\nz = y + 1\nnames = %who_ls"
    code, result = run(spec_of(tmp_path / "s", cells, keep=["y", "z", "names"]))
    assert (code, result["state"]) == (0, "SUCCEEDED"), result["error"]
    assert serde.load(runtime.output_path(str(tmp_path / "s"), "z")) == 3
    assert {"y", "z"} <= set(serde.load(runtime.output_path(str(tmp_path / "s"), "names")))  # the step's namespace
    ipython_dir = os.environ["IPYTHONDIR"]  # this test's own (conftest)
    assert not [name for _, _, names in os.walk(ipython_dir) for name in names if name.startswith("history")]


def test_a_spec_with_only_the_documented_fields_runs(tmp_path):
    """producers and needed_by are extras of the local backend: without them messages say less."""
    value = tmp_path / "x.pkl"
    value.write_bytes(b"")
    spec = {"step": "s", "prelude": [], "parts": [part("%%step s\ny = 1")], "params": {}, "inputs": {"x": str(value)},
            "outputs": [], "keep": [], "metrics": [], "out_dir": str(tmp_path / "s")}
    assert run(spec)[1]["error"].startswith("Step 's' cannot load its input 'x': the file is empty (")
    spec.update(inputs={}, outputs=["ghost"], out_dir=str(tmp_path / "t"))
    assert run(spec)[1]["error"].startswith("Step 's' did not assign 'ghost', but it is declared with --outputs/--metrics.")
    spec.update(outputs=["y"], out_dir=str(tmp_path / "u"))
    code, result = run(spec)
    assert (code, result["state"]) == (0, "SUCCEEDED")
    assert result["saved"] == {"y": {"type": "int", "bytes": os.path.getsize(tmp_path / "u" / "outputs" / "y.pkl")}}


def test_a_name_to_keep_that_the_step_left_unassigned_does_not_stop_the_others(tmp_path):
    code, result = run(spec_of(tmp_path, "if False:\n    maybe = 1\nsure = 2", keep=["maybe", "sure"]))
    assert (code, list(result["saved"]), result["skipped"]) == (0, ["sure"], {})


def test_a_function_received_from_another_step_reads_the_globals_of_the_step_calling_it(tmp_path):
    first = spec_of(tmp_path / "a", "scale = 1\ndef scaled(v):\n    return v * scale", step="a", outputs=["scaled"])
    assert run(first)[1]["state"] == "SUCCEEDED"
    second = spec_of(tmp_path / "b", "scale = 10\ngot = scaled(2)", step="b", keep=["got"],
                     inputs={"scaled": runtime.output_path(str(tmp_path / "a"), "scaled")}, producers={"scaled": "a"})
    assert run(second)[1]["state"] == "SUCCEEDED"
    assert serde.load(runtime.output_path(str(tmp_path / "b"), "got")) == 20


def test_an_object_the_prelude_made_is_saved_as_the_step_left_it(tmp_path):
    prelude = "class Config:\n    rate = 0.1\nshared = Config()"
    spec = spec_of(tmp_path, "shared.rate = 5\nmine = shared", prelude=[prelude], outputs=["mine"])
    assert run(spec)[1]["state"] == "SUCCEEDED"
    consumer = runtime.new_namespace()
    runtime.run_prelude(consumer, {}, [part(f"%%prelude\n{prelude}")])
    mine = serde.load(runtime.output_path(str(tmp_path), "mine"), consumer)
    assert mine.rate == 5 and type(mine) is consumer["Config"]


def test_cells_see_the_builtins_module_and_their_functions_source(tmp_path):
    spec = spec_of(tmp_path, "import inspect\ndef double(v):\n    return 2 * v\n"
                             "source = inspect.getsource(double)\nsize = __builtins__.len([1, 2])", keep=["source", "size"])
    code, result = run(spec)
    assert code == 0, result["error"]
    assert serde.load(runtime.output_path(str(tmp_path), "source")) == "def double(v):\n    return 2 * v\n"
    assert serde.load(runtime.output_path(str(tmp_path), "size")) == 2


def test_a_value_is_digested_a_chunk_at_a_time(tmp_path):
    from conftest import traced_peak

    path = tmp_path / "v.pkl"
    path.write_bytes(bytes(8 * 2**20))
    digest, peak = traced_peak(lambda: runtime.file_digest(path))
    assert digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() and peak < 3 * 2**20


def test_a_generator_has_moved_when_its_state_changed_or_numpy_arrived_having_drawn():
    import random

    import numpy as np

    state = random.getstate()
    keys = np.arange(624, dtype=np.uint32)

    def numpy_state(position, gauss=0, words=keys):
        return ("MT19937", words.copy(), position, gauss, 0.0)

    assert runtime.moved({"random": state}, {"random": state}) == []
    moved_on = (3, (*state[1][:-1], (state[1][-1] + 1) % 625), None)  # its position in the block, one further
    assert runtime.moved({"random": state}, {"random": moved_on}) == ["random"]
    fresh = [runtime.moved({"random": state}, {"random": state, "numpy": numpy_state(p)}) for p in (623, 624)]
    assert fresh == [[], []]  # numpy imported between the two, never drawn from: as it would start anyway
    drawn = [runtime.moved({"random": state}, {"random": state, "numpy": numpy_state(p, g)}) for p, g in ((5, 0), (624, 1))]
    assert drawn == [["numpy"], ["numpy"]]
    same = runtime.moved({"numpy": numpy_state(7)}, {"numpy": numpy_state(7)})
    other_words = runtime.moved({"numpy": numpy_state(7)}, {"numpy": numpy_state(7, words=keys[::-1].copy())})
    assert (same, other_words) == ([], ["numpy"])


def test_open_files_are_listed_and_flushed_whatever_their_state(tmp_path):
    held, done = open(tmp_path / "held.txt", "w"), open(tmp_path / "done.txt", "w")
    done.close()
    try:
        held.write("kept")
        found = runtime.open_files()
        assert any(file is held for file in found) and not any(file is done for file in found)
        runtime.flush([held, done])  # a closed file is passed over
        assert (tmp_path / "held.txt").read_text() == "kept"
    finally:
        held.close()


def in_a_child(body):
    """Run `body` in a forked child that must end by runtime.leave; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(99)  # leave() was not reached
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_step_leaves_as_python_exits_its_threads_exit_handlers_and_cycles_included(tmp_path):
    import atexit
    import gc
    import threading
    import time

    def step():
        class Holder:
            pass

        holder = Holder()
        holder.me, holder.file = holder, open(tmp_path / "cycle.txt", "w")  # only a cycle holds the file
        holder.file.write("data")
        del holder
        threading.Thread(target=lambda: (time.sleep(0.2), (tmp_path / "thread.txt").write_text("late"))).start()
        atexit.register(lambda: (tmp_path / "atexit.txt").write_text("ran"))
        atexit.register(gc.collect)  # as IPython's exit handler does (a step with % lines has one)
        runtime.leave(3, {"x": 1})

    assert in_a_child(step) == 3
    assert [(tmp_path / name).read_text() for name in ("cycle.txt", "thread.txt", "atexit.txt")] == ["data", "late", "ran"]


def test_a_warm_step_runs_only_its_own_exit_handlers_and_finalizers(tmp_path):
    import atexit
    import tempfile

    def step():
        atexit.register(lambda: (tmp_path / "prelude.txt").write_text("ran"))
        preludes = tempfile.TemporaryDirectory(dir=tmp_path)  # finalized at exit, by the supervisor alone
        runtime.forget_exit_handlers()
        atexit.register(lambda: (tmp_path / "step.txt").write_text("ran"))
        steps = tempfile.TemporaryDirectory(dir=tmp_path)
        (tmp_path / "names.txt").write_text(f"{preludes.name}\n{steps.name}")
        runtime.leave(0, {"preludes": preludes, "steps": steps}, files=())

    assert in_a_child(step) == 0
    preludes, steps = (tmp_path / "names.txt").read_text().splitlines()
    assert not (tmp_path / "prelude.txt").exists() and (tmp_path / "step.txt").read_text() == "ran"
    assert os.path.isdir(preludes) and not os.path.exists(steps)


def test_a_fork_keeps_the_generators_the_prelude_seeded_or_drew_from_and_reseeds_the_others():
    import random

    import numpy as np

    saved = random.getstate(), np.random.get_state()
    try:
        before = runtime.random_states()
        random.seed(7)  # the prelude seeded the random module; numpy it left alone
        after = runtime.random_states()
        states = runtime.fork_states(before, after, seeded=())
        assert states["random"] == after["random"] and states["numpy"] is None
        assert runtime.fork_states(before, before, seeded=("numpy",))["numpy"] is before["numpy"]
        random.random(), np.random.random()  # the fork's parent draws on; the step starts as the prelude left it
        numpy_before = np.random.get_state()
        runtime.start_random_states(states)
        assert random.getstate() == after["random"]
        assert np.random.get_state()[1].tobytes() != numpy_before[1].tobytes()  # reseeded: not the parent's numbers
        runtime.start_random_states({"numpy": numpy_before})
        assert np.random.get_state()[1].tobytes() == numpy_before[1].tobytes()
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
