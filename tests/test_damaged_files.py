"""Damaged or hostile files under `.kfmagic/`: one message naming run, step and variable, values
loaded only from the run's own folder, private folders and files, run folders never shared, a full
disk, and no scratch folders left in the temp dir. Real runs, real processes, real files."""

import glob
import json
import io
import os
import pickle
import random
import stat
import struct
import subprocess
import sys
import tempfile
import threading

import pytest

from kfmagic import portability
from kfmagic.backends import base, launcher
from kfmagic.display import TextProgress
from kfmagic.errors import KfmagicError, RunFailed
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

DAMAGES = ["truncated", "empty", "random", "table", "missing"]


def pipeline_of(*cells, name="dmg"):
    pipeline = Pipeline().init(name)
    for number, text in enumerate(cells, 1):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    return pipeline


def run_of(pipeline, **kwargs):
    """The Run, whether it succeeded or not (a failed one carries its message as `.message`)."""
    try:
        run = pipeline.run(progress=TextProgress(io.StringIO()), **kwargs)
        run.message = ""
    except RunFailed as failure:
        run, run.message = failure.run, str(failure)
    return run


def damage(path, how):
    """Damage a value file (with a table of buffers: a numpy array) as a disk, a copy or a person would."""
    data = open(path, "rb").read()
    assert data.endswith(b"KFMOOB01")  # the value really has a table of buffers to break
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    elif how == "random":  # starts as a pickle does, then noise
        data = b"\x80\x05" + random.Random(7).randbytes(len(data))
    elif how == "table":  # the marker kept, the table's length pointing past the file's start
        data = data[:-16] + struct.pack("<Q8s", len(data) * 2, b"KFMOOB01")
    if how == "missing":
        os.remove(path)
    else:
        with open(path, "wb") as file:
            file.write(data)


def assert_one_message(text, *names):
    assert all(name in text for name in names), (names, text)
    assert "Traceback" not in text and 'File "' not in text, text


# ---------------------------------------------------------------- damaged values, each reader


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_value_is_one_message_for_run_load_and_for_the_step_that_reads_it(tmp_path, monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    run = run_of(pipeline_of("%%step a\nimport numpy as np\nx = np.arange(50_000)", "%%step b\ntotal = int(x.sum())"))
    assert run.state == "SUCCEEDED"
    damage(run.steps["a"].saved["x"]["path"], how)

    with pytest.raises(KfmagicError) as caught:
        run.load("x")
    assert_one_message(str(caught.value), run.id, "step 'a'", "'x'", "Run the pipeline again")

    # step b run again on the spec the local backend wrote for it, in its own process
    spec = os.path.join(run.run_dir, "b", "spec.json")
    done = subprocess.run([sys.executable, "-m", "kfmagic.runtime", spec], env=launcher.step_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert_one_message(done.stderr, "Step 'b'", "'x'", "step 'a'", run.id)
    step = base.StepRun("b")
    step.apply_result(base.read_result(os.path.dirname(spec)), os.path.dirname(spec))
    assert step.state == "FAILED" and step.saved == {}
    assert_one_message(step.error, "Step 'b'", "'x'", "step 'a'")


@pytest.fixture(scope="module")
def kfp_local_run(tmp_path_factory):
    """One kfp-local run whose last step keeps one array per kind of damage."""
    workdir = tmp_path_factory.mktemp("kfp_local")
    cells = "\n".join(f"v_{how} = np.arange(50_000) + {number}" for number, how in enumerate(DAMAGES))
    pipeline = pipeline_of(f"%%step make\nimport numpy as np\n{cells}", name="arts")
    before = os.getcwd()
    os.chdir(workdir)
    try:
        run = run_of(pipeline, runner="kfp-local")
    finally:
        os.chdir(before)
    assert run.state == "SUCCEEDED", run.message
    return run


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_kfp_local_artifact_is_one_message(kfp_local_run, how):
    path = kfp_local_run.steps["make"].saved[f"v_{how}"]["path"]
    assert os.path.join(kfp_local_run.run_dir, "kfp") in path  # the artifact kfp.local wrote, not a local run's file
    damage(path, how)
    with pytest.raises(KfmagicError) as caught:
        kfp_local_run.load(f"v_{how}")
    assert_one_message(str(caught.value), kfp_local_run.id, "step 'make'", f"'v_{how}'", path)


def test_in_a_kernel_a_damaged_value_and_a_malformed_result_are_one_line_each(run_cells):
    out = run_cells([
        "%load_ext kfmagic\n%pipeline init kern",
        "%%step a\nimport numpy as np\nx = np.arange(50_000)",
        "%%step b\ny = int(x.sum())",
        "run = %pipeline run",
        "open(run.steps['a'].saved['x']['path'], 'r+b').truncate(100)\n"
        "open(run.run_dir + '/b/result.json', 'w').write('{\"saved\": []}')",
        "x = run.load('x')",
        "import kfmagic\nkfmagic.pipeline().compile('kern.yaml')\nprint('compiled', run.load('y'), len(x))",
    ], allow_errors=True)
    assert out[5].startswith("KfmagicError: run.load('x'): the value of 'x' saved by step 'a' of run kern-")
    assert_one_message(out[5], "truncated", "Run the pipeline again")
    said, *shown = out[5].strip().splitlines()  # the error, then what IPython shows of its traceback
    assert shown == ["\x1b[0;31mKfmagicError\x1b[0m" + said[len("KfmagicError"):]]  # just the message
    assert out[6].strip().endswith("compiled 1249975000 50000")  # the kernel's x untouched; compile went on


# ---------------------------------------------------------------- malformed result.json

WHOLE = {"state": "SUCCEEDED", "error": None, "saved": {}, "skipped": {}, "metrics": {}}


def whole(**fields):
    """A result as the runtime writes it, with `fields` changed."""
    return json.dumps({**WHOLE, **fields})


MALFORMED = {
    "not JSON": "{'state': 'SUCCEEDED'",
    "not UTF-8": b"\xff\xfe{}",
    "a list": "[1, 2]",
    "saved is a list": whole(saved=["x"]),
    "a saved entry not a dict": whole(saved={"x": 3}),
    "a key missing": json.dumps({key: value for key, value in WHOLE.items() if key != "state"}),
    "state of the wrong type": whole(state=1),
    "bytes as text": whole(saved={"x": {"type": "int", "bytes": "12"}}),
    "a relative path": whole(saved={"x": {"type": "int", "bytes": 12, "path": "x.pkl"}}),
    "a name that is a path": whole(saved={"../../x": {"type": "int", "bytes": 12}}),
    "a metric that is not a number": whole(metrics={"m": "high"}),
    "nested too deep": "[" * 100_000 + "]" * 100_000,
}


def write_result(out_dir, content):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "result.json")
    with open(path, "wb") as file:
        file.write(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_result_is_a_failed_step_naming_its_file_and_compile_skips_it(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    readable = tmp_path / ".kfmagic" / "runs" / "older" / "load"
    write_result(readable, whole(saved={"frame": {"type": "list", "bytes": 300 * 2**20}}))
    os.utime(readable / "result.json", (1, 1))
    broken = tmp_path / ".kfmagic" / "runs" / "newer" / "load"
    path = write_result(broken, MALFORMED[kind])

    step = base.StepRun("load")
    step.apply_result(base.read_result(str(broken)), str(broken))
    assert step.state == "FAILED" and step.saved == {} and step.metrics == {}
    assert_one_message(step.error, "Step 'load'", "unreadable", path)
    # compile's size check passes over it to the readable result of an older run
    assert portability.latest_sizes(str(tmp_path), "load") == {"frame": 300 * 2**20}
    pipeline_of("%%step load\nframe = [1]", "%%step use\nn = len(frame)").compile(str(tmp_path / "p.yaml"))
    assert "Step 'load' passes 'frame' (300 MiB" in capsys.readouterr().err


def test_results_that_are_not_files_are_unreadable_and_never_block(tmp_path):
    (tmp_path / "elsewhere.json").write_text(whole())
    for name, make in {
        "link": lambda path: os.symlink(tmp_path / "elsewhere.json", path),  # a whole result, but not here
        "fifo": os.mkfifo,  # reading a FIFO would wait for a writer forever
        "folder": os.mkdir,
    }.items():
        out_dir = tmp_path / ".kfmagic" / "runs" / "old" / name
        out_dir.mkdir(parents=True)
        make(out_dir / "result.json")
        result = base.read_result(str(out_dir))
        assert result["state"] == "FAILED" and "unreadable" in result["error"], name
        assert portability.latest_sizes(str(tmp_path), name) == {}
    assert base.read_result(str(tmp_path / "nothing")) is None  # no result yet: still running


@pytest.mark.parametrize("runner", ["local", "kfp-local"])
def test_a_step_that_leaves_a_malformed_result_fails_and_later_runs_and_compiles_go_on(tmp_path, monkeypatch, runner):
    monkeypatch.chdir(tmp_path)
    hostile = (
        "%%step bad\nimport os, sys\n"
        "where = os.path.join(os.environ['KFMAGIC_RESULT_DIR'], 'bad') if 'KFMAGIC_RESULT_DIR' in os.environ "
        "else os.path.dirname(sys.argv[1])\n"
        "open(os.path.join(where, 'result.json'), 'w').write('{\"state\": \"SUCCEEDED\", \"saved\": [\"x\"]}')\n"
        "os._exit(0)  # before the runtime writes the real result\nx = 1"
    )
    run = run_of(pipeline_of(hostile, "%%step after\ny = x + 1"), runner=runner)
    assert {name: step.state for name, step in run.steps.items()} == {"bad": "FAILED", "after": "SKIPPED"}
    assert_one_message(run.message, "Step 'bad'", "unreadable", os.path.join(run.run_dir, "bad", "result.json"))
    fixed = pipeline_of("%%step bad\nx = 1", "%%step after\ny = x + 1")
    fixed.compile(str(tmp_path / "p.yaml"))
    assert run_of(fixed, runner=runner).load("y") == 2


# ---------------------------------------------------------------- values only from the run's own folder


class _RunsCode:
    """Loading it creates a file: what a hostile pickle would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_values_are_loaded_only_from_inside_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "code-ran"
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    run = run_of(pipeline_of("%%step a\nx = [1]\ny = [2]"))
    out_dir = os.path.join(run.run_dir, "a")

    # a result naming a path outside the run (as a kfp-local result names its artifacts)
    result = base.read_result(out_dir)
    result["saved"]["x"]["path"] = str(hostile)
    write_result(out_dir, json.dumps(result))
    run.steps["a"].apply_result(base.read_result(out_dir), out_dir)
    with pytest.raises(KfmagicError) as caught:
        run.load("x")
    assert_one_message(str(caught.value), run.id, "step 'a'", "'x'", "outside the run's folder", str(hostile))

    # a value file replaced by a link that leads out of the run
    value = run.steps["a"].saved["y"]["path"]
    os.remove(value)
    os.symlink(hostile, value)
    with pytest.raises(KfmagicError, match="outside the run's folder"):
        run.load("y")
    assert not marker.exists()  # the hostile pickle was never loaded

    # a link that stays inside the run is followed
    os.remove(value)
    os.symlink(os.path.join(out_dir, "outputs", "x.pkl"), value)
    assert run.load("y") == [1]


# ---------------------------------------------------------------- private folders and files


def modes(root):
    """{path relative to root: permission bits} for every folder and file under root."""
    found = {}
    for folder, _, files in os.walk(root):
        found[os.path.relpath(folder, root)] = stat.S_IMODE(os.stat(folder).st_mode)
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


@pytest.mark.parametrize("runner", ["local", "kfp-local"])
def test_runs_are_private_and_out_of_git(tmp_path, monkeypatch, runner):
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".kfmagic").mkdir(mode=0o755)  # made by an older kfmagic, readable by all
    run = run_of(pipeline_of("%%step a --metrics m\nm = 1\nx = [1]", "%%step b\ny = x + [2]"), runner=runner)
    assert run.state == "SUCCEEDED", run.message
    kfmagic = str(tmp_path / ".kfmagic")
    folders = [kfmagic, os.path.join(kfmagic, "runs"), run.run_dir]
    files = [os.path.join(kfmagic, ".gitignore"), os.path.join(run.run_dir, "run.json")]
    files += [os.path.join(run.run_dir, step, "result.json") for step in run.steps]
    files += [info["path"] for step in run.steps.values() for info in step.saved.values()]
    if runner == "kfp-local":  # what the component writes beside kfp.local's files
        files += glob.glob(os.path.join(run.run_dir, "*", "started"))
        files += glob.glob(os.path.join(run.run_dir, "kfp", "*", "*", "kfmagic_output"))
    assert len(files) == {"local": 7, "kfp-local": 11}[runner]
    assert {path: stat.S_IMODE(os.stat(path).st_mode) for path in folders + files} == {
        **dict.fromkeys(folders, 0o700), **dict.fromkeys(files, 0o600)}
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    assert status.stdout == ""  # pickled data never shows up to be committed


@pytest.mark.parametrize("runner", ["local", "kfp-local"])
def test_every_folder_of_a_run_is_0700_and_every_file_0600(tmp_path, monkeypatch, runner):
    monkeypatch.chdir(tmp_path)
    run = run_of(pipeline_of("%%step a --metrics m\nm = 1\nx = [1]", "%%step b\ny = x + [2]"), runner=runner)
    assert run.state == "SUCCEEDED", run.message
    found = modes(run.run_dir)
    assert {path: mode for path, mode in found.items() if mode not in (0o700, 0o600)} == {}
    assert {mode for path, mode in found.items() if os.path.isdir(os.path.join(run.run_dir, path))} == {0o700}


# ---------------------------------------------------------------- run folders are never shared


def test_runs_started_at_once_never_share_a_folder(tmp_path, monkeypatch):
    drawn = []

    def clashing(nbytes):  # every random part is handed out twice: half the draws clash
        drawn.append(nbytes)
        return f"{len(drawn) // 2:0{2 * nbytes}x}"

    made = []
    start = threading.Barrier(48)

    def start_run():
        start.wait()
        made.append(base.new_run_dir(str(tmp_path), "same"))

    for draw in (base.secrets.token_hex, clashing):
        monkeypatch.setattr(base.secrets, "token_hex", draw)
        made.clear()
        threads = [threading.Thread(target=start_run) for _ in range(48)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({run_id for run_id, _ in made}) == len({run_dir for _, run_dir in made}) == 48
        assert all(os.path.isdir(run_dir) and stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700 for _, run_dir in made)
    assert len(drawn) > 48 and min(drawn) >= 4  # clashes happened, each drew again; 32 random bits at least
    assert len(os.listdir(tmp_path / ".kfmagic" / "runs")) == 96


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A filesystem of its own (tmpfs: 2 MiB, 1000 files), to fill; unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=1000", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small filesystem to fill, and mounting one is not permitted here: "
                    f"{mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        os.chdir(tmp_path)  # a working directory on the disk would keep it busy
        subprocess.run(["umount", str(disk)], check=True)


def fill(disk, leave=0):
    """Fill `disk` with 4 KiB files (a page each) until nothing fits, then free `leave` pages."""
    fillers = []
    try:
        while True:
            fillers.append(disk / f"filler-{len(fillers)}")
            fillers[-1].write_bytes(b"\0" * 4096)
    except OSError as error:
        assert error.errno == 28  # ENOSPC
    for path in fillers[:leave]:
        path.unlink()


def test_a_value_that_does_not_fit_fails_its_step_and_keeps_the_finished_ones(small_disk, monkeypatch):
    monkeypatch.chdir(small_disk)
    run = run_of(pipeline_of("%%step a\nsmall = list(range(10))", "%%step b\nbig = bytes(8 * 2**20)\nn = len(small)"))
    assert {name: step.state for name, step in run.steps.items()} == {"a": "SUCCEEDED", "b": "FAILED"}
    assert_one_message(run.steps["b"].error, "Step 'b'", "'big'", "No space left on device")
    assert_one_message(run.message, "Step 'b'", "'big'", "No space left on device")
    assert run.load("small") == list(range(10))  # the finished step's value is kept
    assert not [name for name in os.listdir(os.path.join(run.run_dir, "b", "outputs")) if "big" in name]


@pytest.mark.parametrize("full", ["no inode for kfmagic's folder", "no byte for the run's record"])
def test_a_run_that_cannot_create_its_folder_or_record_says_what_did_not_fit(small_disk, monkeypatch, full):
    monkeypatch.chdir(small_disk)
    pipeline = pipeline_of("%%step a\nx = 1")
    if "inode" in full:
        files = 0
        try:
            while True:
                (small_disk / f"empty-{files}").touch()
                files += 1
        except OSError as error:
            assert error.errno == 28
        expected = "kfmagic's folder"
    else:
        assert run_of(pipeline).state == "SUCCEEDED"  # .kfmagic/ exists from an earlier run
        fill(small_disk)
        expected = "the record of run dmg-"
    with pytest.raises(KfmagicError) as caught:
        pipeline.run(progress=TextProgress(io.StringIO()))
    assert not isinstance(caught.value, RunFailed)  # nothing started
    assert_one_message(str(caught.value), "No space left on device while writing", expected, "Free space")


def test_a_run_whose_specs_do_not_fit_names_the_step(small_disk, monkeypatch):
    monkeypatch.chdir(small_disk)
    pipeline = pipeline_of("%%step a\nx = 1")
    assert run_of(pipeline).state == "SUCCEEDED"
    fill(small_disk, leave=1)  # room for the run's record, none for a spec
    with pytest.raises(KfmagicError) as caught:
        pipeline.run(progress=TextProgress(io.StringIO()))
    assert_one_message(str(caught.value), "No space left on device while writing", "step 'a'")


# ---------------------------------------------------------------- nothing left in the temp dir


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temp dir of this test's own, for this process and every process it starts."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert tempfile.gettempdir() == str(folder)
    return folder


KFMAGIC_SCRATCH = "kfmagic-scratch-"


def test_a_kfp_local_run_leaves_no_scratch_folder(tmp_path, monkeypatch, private_tmp):
    monkeypatch.chdir(tmp_path)
    run = run_of(pipeline_of("%%step a\nx = [1]", "%%step b\ny = x + [1]\nraise ValueError('no')"), runner="kfp-local")
    assert {name: step.state for name, step in run.steps.items()} == {"a": "SUCCEEDED", "b": "FAILED"}
    assert [name for name in os.listdir(private_tmp) if name.startswith(KFMAGIC_SCRATCH)] == []
    left = [folder for folder, _, _ in os.walk(run.run_dir) if os.path.basename(folder).startswith(KFMAGIC_SCRATCH)]
    assert left == []  # nor in the run's folder, where kfp-local's scratch lives while a step runs
    assert run.load("x") == [1]


def test_a_kfp_local_run_leaves_the_temp_dir_as_it_was(tmp_path, monkeypatch, private_tmp):
    monkeypatch.chdir(tmp_path)
    run = run_of(pipeline_of("%%step a\nx = [1]", "%%step b\ny = x + [1]"), runner="kfp-local")
    assert run.state == "SUCCEEDED"
    assert os.listdir(private_tmp) == []


def test_a_submitted_step_leaves_no_scratch_folder(kfp_server, tmp_path, monkeypatch, private_tmp):
    """In a pod (here: the loopback cluster's kfp.local), no result folder and no scratch stay behind."""
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of("%%step a --no-install\nx = [1]", "%%step b --no-install\ny = x + [1]")
    pipeline.configure(host=kfp_server.url)
    run = run_of(pipeline, wait=True)
    assert run.state == "SUCCEEDED", run.message
    assert [name for name in os.listdir(private_tmp) if name.startswith(KFMAGIC_SCRATCH)] == []
