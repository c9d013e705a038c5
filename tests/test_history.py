"""Looking back and debugging from the notebook: `%pipeline runs`, `compare`, `prune` and `pull` in a
real kernel over real runs, the same commands in the CLI (a subprocess), and the small things a new
user tripped on (`%pipeline` alone, `%%step?`, a cluster that is not configured, `kfmagic --version`)."""

import importlib.metadata
import json
import os
import re
import signal
import subprocess

import nbformat
import pytest
from conftest import Kernel, make_notebook

from kfmagic import syntax

PIPELINE = [
    "%load_ext kfmagic",
    "%pipeline init hist",
    "%%params\nrate = 2",
    "%%step make\ndata = list(range(10))",
    "%%step scale --metrics total\nscaled = [x * rate for x in data]\ntotal = sum(scaled)",
]


def ok(kernel, code):
    status, text = kernel.run(code)
    assert status == "ok", text
    return text


def value(kernel, expression):
    """What `expression` is in the kernel, through JSON."""
    return json.loads(ok(kernel, f"import json, sys, kfmagic; print(json.dumps({expression}))").strip().splitlines()[-1])


def short(run_id):
    return run_id.rsplit("-", 1)[-1]


def du(folder):
    """Bytes on disk under `folder` as du counts them (a file with several links once)."""
    return int(subprocess.run(["du", "-s", "-B1", folder], capture_output=True, text=True, check=True).stdout.split()[0])


@pytest.fixture(scope="module")
def looked_back(tmp_path_factory):
    """A kernel with two runs of `hist` (rate 2, then 3; `make` reused from the cache by the second)."""
    folder = tmp_path_factory.mktemp("history")
    kernel = Kernel(folder)
    for cell in PIPELINE:
        ok(kernel, cell)
    ids = []
    for rate in (2, 3):
        ok(kernel, f"run = %pipeline run --param rate={rate}")
        ids.append(value(kernel, "run.id"))
    yield kernel, folder, ids
    kernel.shutdown()


def test_runs_lists_this_notebooks_runs_newest_first_within_100_columns(looked_back):
    kernel, folder, (first, second) = looked_back
    damaged = folder / ".kfmagic" / "runs" / "hist-20990101-000000-0badf00d"
    damaged.mkdir()
    (damaged / "run.json").write_text("{not json")
    shown = ok(kernel, "%pipeline runs")
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[0] == "runs of pipeline hist, newest first: 2"
    assert lines[1].split() == ["run", "runner", "state", "started", "time", "params", "metrics"]
    rows = [line.split() for line in lines[3:5]]
    assert [row[:3] for row in rows] == [[short(second), "local", "done"], [short(first), "local", "done"]]
    assert rows[0][-2:] == ["rate=3", "total=135"] and rows[1][-2:] == ["rate=2", "total=90"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d \d+\.\ds$", " ".join(rows[0][3:6]))
    footer = " ".join(lines[5:])
    size = re.search(r"\.kfmagic/runs takes ([\d.]+) KB on disk", footer)
    assert size and abs(float(size.group(1)) * 1000 - du(folder / ".kfmagic" / "runs")) < 100
    assert "hist-20990101-000000-0badf00d" in footer and "left alone" in footer
    page = value(kernel, "kfmagic.pipeline().runs()._repr_html_()")
    assert f"<code>{first}</code>" in page and f"<code>{second}</code>" in page and "rate=3" in page
    assert value(kernel, f"kfmagic.open_run('{short(first)}').metrics") == {"scale": {"total": 90.0}}  # a short id


def test_compare_puts_params_and_metrics_side_by_side_and_plots_only_when_asked(looked_back):
    kernel, folder, (first, second) = looked_back
    assert value(kernel, "'matplotlib' in sys.modules") is False  # runs, runs' HTML: no matplotlib
    shown = ok(kernel, "c = %pipeline compare\nprint(repr(c))")
    assert shown.splitlines()[0] == "pipeline hist: 2 runs compared"
    assert shown.splitlines()[1].split() == [short(first), short(second)]  # oldest first
    assert [line.split() for line in shown.splitlines()[3:6]] == [
        ["state", "done", "done"], ["rate", "(param)", "2", "3"], ["total", "90", "135"]]
    assert value(kernel, "c.data") == {
        "runs": [first, second], "params": {"rate": {first: 2, second: 3}}, "metrics": {"total": {first: 90.0, second: 135.0}},
    }
    assert value(kernel, "'matplotlib' in sys.modules") is False
    assert value(kernel, "'data:image/png;base64,' in c._repr_html_()") is True  # the plot, in a notebook
    assert value(kernel, "'matplotlib' in sys.modules") is True
    chosen = ok(kernel, f"chosen = %pipeline compare {short(second)} {first}\nprint(repr(chosen))")
    assert chosen.splitlines()[1].split() == [short(second), short(first)]  # in the order asked, short ids too
    status, said = kernel.run("%pipeline compare nosuchrun")
    assert status == "error" and "No run 'nosuchrun' among the runs kept in" in said and "`%pipeline runs` lists" in said
    assert "Traceback" not in said and value(kernel, "c.data['runs']") == [first, second]


def test_prune_frees_what_no_kept_run_shares_and_kept_runs_still_load_and_reuse(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        for cell in PIPELINE[:3]:
            ok(kernel, cell)
        ok(kernel, "%%step make\nblob = bytes(range(256)) * 40_000")  # 10 MB, that every run shares
        ok(kernel, "%%step scale --metrics total\ntotal = len(blob) * rate")
        ids = []
        for rate in (2, 3):
            ok(kernel, f"run = %pipeline run --param rate={rate}")
            ids.append(value(kernel, "run.id"))
        first, second = (tmp_path / ".kfmagic" / "runs" / run_id for run_id in ids)
        shared = second / "make" / "outputs" / "blob.pkl"
        assert os.stat(shared).st_nlink == 2 and os.stat(shared).st_size > 10_000_000  # a link to the first run's

        dry = ok(kernel, "%pipeline prune --keep 1 --dry-run")
        assert dry.startswith("prune pipeline hist: would remove 1 run, freeing ") and f"would remove {ids[0]}" in dry
        assert first.is_dir()
        before = du(tmp_path / ".kfmagic" / "runs")
        pruned = value(kernel, "(lambda p: [p.removed, p.freed])(kfmagic.pipeline().prune(1))")
        assert pruned[0] == [ids[0]] and not first.exists() and second.is_dir()
        handed_log = os.lstat(second / "make" / "log.txt").st_blocks * 512  # the removed run's log, handed over
        assert before - du(tmp_path / ".kfmagic" / "runs") == pruned[1] - handed_log
        assert 0 < pruned[1] < 1_000_000  # the 10 MB value stays: the second run links to it
        assert os.stat(shared).st_nlink == 1
        assert value(kernel, f"len(kfmagic.open_run('{ids[1]}').load('blob'))") == 10_240_000
        assert f"reused the outputs of run {ids[0]}, since pruned" in ok(kernel, f"%pipeline logs make {ids[1]}")

        ok(kernel, "third = %pipeline run --param rate=4")
        assert value(kernel, "third.steps['make'].cached_from") == ids[1]  # the cache now names the kept run
        kept = ok(kernel, "%pipeline prune --keep 0")
        assert f"removed {ids[1]}" in kept and "kept " + value(kernel, "third.id") + ": it is the kernel's last run" in kept
        assert value(kernel, "len(third.load('blob'))") == 10_240_000
    finally:
        kernel.shutdown()


def test_a_running_run_is_never_pruned_and_a_dead_one_is_stopped(tmp_path):
    notebook = tmp_path / "slow.ipynb"
    nbformat.write(make_notebook([*PIPELINE[:2], "%%step wait\nprint('waiting', flush=True)\nimport time; time.sleep(60)"]), notebook)
    cli = subprocess.Popen(["kfmagic", "run", str(notebook)], cwd=tmp_path, stdout=subprocess.PIPE, text=True, start_new_session=True)
    kernel = Kernel(tmp_path)
    try:
        assert cli.stdout.readline().startswith("run hist-")
        while "waiting" not in cli.stdout.readline():
            pass
        for cell in PIPELINE:
            ok(kernel, cell)
        assert [line.split()[2] for line in ok(kernel, "%pipeline runs").splitlines()[3:4]] == ["running"]
        kept = ok(kernel, "%pipeline prune --keep 0")
        assert "removed 0 runs" in kept and ": it is running" in kept
        os.kill(cli.pid, signal.SIGKILL)  # its process dies: its run is no longer running
        cli.wait(timeout=30)
        assert ok(kernel, "%pipeline runs").splitlines()[3].split()[2] == "stopped"
        assert "removed 1 run" in ok(kernel, "%pipeline prune --keep 0")
        assert os.listdir(tmp_path / ".kfmagic" / "runs") == []
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
        kernel.shutdown()


FAILING = [
    "%load_ext kfmagic",
    "%%params\nk = 1",
    "%%step a\nx = [10, 20]",
    "%%step b\ny = x[k]",
    "%%step c\nz = y",
]


def test_pull_sets_what_a_failed_step_saw_and_the_failure_says_so(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        for cell in FAILING:
            ok(kernel, cell)
        assert ok(kernel, "%pipeline check").strip() == "the pipeline: 3 steps, no problems found."
        status, said = kernel.run("%pipeline run --param k=2")  # fine here with k = 1; the run's k fails
        run_id = re.search(r"Run (pipeline-\S+) FAILED", said).group(1)
        log = tmp_path / ".kfmagic" / "runs" / run_id / "b" / "log.txt"
        step_lines = [line for line in said.splitlines() if line.startswith("[b] ")]
        assert step_lines[-2:] == [
            "[b] IndexError: list index out of range", f"[b] (run {run_id}, step 'b' failed; its log: {log})",
        ]
        assert status == "error" and f"`%pipeline pull b {run_id}` loads what step 'b' saw" in said
        assert "IndexError: list index out of range" in log.read_text()

        ok(kernel, "del x, k")
        pulled = ok(kernel, "%pipeline pull b")
        assert pulled.splitlines() == [
            f"Set in the kernel what step 'b' saw in run {run_id}:", "  x  from step 'a'", "  k  parameter, 2",
            "Re-run the cell of step 'b' to run it here.",
        ]
        assert value(kernel, "[x, k]") == [[10, 20], 2]
        status, again = kernel.run("%%step b\ny = x[k]")
        assert status == "error" and "IndexError" in again  # the failure, here, with the step's inputs

        ok(kernel, "x = 'mine'")
        status, said = kernel.run(f"%pipeline pull nosuch {short(run_id)}")
        assert status == "error" and f"run {run_id} has no step 'nosuch'. Steps: a, b, c." in said
        assert value(kernel, "x") == "mine" and "Traceback" not in said
        assert "  x  from step 'a'" in ok(kernel, f"%pipeline pull b {short(run_id)}")  # by the short id
    finally:
        kernel.shutdown()


def test_pipeline_alone_and_help_list_every_subcommand_and_step_help_says_cell_magic(tmp_path):
    kernel = Kernel(tmp_path)
    try:
        ok(kernel, "%load_ext kfmagic")
        listed = ok(kernel, "%pipeline")
        assert ok(kernel, "%pipeline --help") == listed == ok(kernel, "%pipeline -h  # the same")
        lines = listed.splitlines()
        assert [line.split()[0] for line in lines[2:]] == list(syntax.PIPELINE_SUBCOMMANDS)
        assert max(map(len, lines)) <= 100
        for magic in ("step", "prelude", "params"):
            usage = [line.strip() for line in help_page(kernel, f"%%{magic}?").splitlines() if f"%{magic}" in line][0]
            assert usage.startswith(f"%%{magic}") and "\x1b" not in usage, usage
    finally:
        kernel.shutdown()


def help_page(kernel, code):
    """What the front-end pages for `code` (`%%step?`): the execute reply's payload, as text."""
    msg_id = kernel.send(code)
    while True:
        reply = kernel.client.get_shell_msg(timeout=60)
        if reply["parent_header"].get("msg_id") == msg_id:
            return re.sub(r"\x1b\[[0-9;]*m", "", reply["content"]["payload"][0]["data"]["text/plain"])


def kfmagic(*args, cwd, env=None):
    return subprocess.run(["kfmagic", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_the_command_line_lists_compares_and_prunes_a_notebooks_runs(tmp_path):
    notebook = tmp_path / "nb" / "hist.ipynb"
    notebook.parent.mkdir()
    nbformat.write(make_notebook(PIPELINE), notebook)
    runs_dir, ids = notebook.parent / ".kfmagic" / "runs", []
    for rate in (5, 6):  # oldest first (two runs in one second: their ids do not sort by time)
        assert kfmagic("run", str(notebook), "--param", f"rate={rate}", cwd=tmp_path).returncode == 0
        ids += sorted(set(os.listdir(runs_dir)) - set(ids))
    listed = kfmagic("runs", "nb/hist.ipynb", cwd=tmp_path)
    assert listed.returncode == 0 and [line.split()[0] for line in listed.stdout.splitlines()[3:5]] == [
        short(ids[1]), short(ids[0])]
    compared = kfmagic("compare", "nb/hist.ipynb", cwd=tmp_path)
    assert compared.stdout.splitlines()[-1].split() == ["total", "225", "270"]
    dry = kfmagic("prune", "nb/hist.ipynb", "--keep", "1", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and f"would remove {ids[0]}" in dry.stdout and sorted(os.listdir(runs_dir)) == sorted(ids)
    pruned = kfmagic("prune", "nb/hist.ipynb", "--keep", "1", cwd=tmp_path)
    assert f"removed {ids[0]}" in pruned.stdout and os.listdir(runs_dir) == [ids[1]]
    bad = kfmagic("prune", "nb/hist.ipynb", cwd=tmp_path)
    assert bad.returncode == 2 and "--keep" in bad.stderr
    version = kfmagic("--version", cwd=tmp_path)
    assert version.stdout.strip() == f"kfmagic {importlib.metadata.version('kfmagic')}"


def test_kfp_without_a_host_says_so_alone_and_leaves_no_folder(tmp_path):
    notebook = tmp_path / "one.ipynb"
    nbformat.write(make_notebook(["%%step one\nx = 1"]), notebook)
    env = {key: value for key, value in os.environ.items()
           if key not in ("KF_PIPELINES_ENDPOINT", "KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    result = kfmagic("run", str(notebook), "--runner", "kfp", cwd=tmp_path, env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("kfmagic run: No Kubeflow Pipelines host is configured")
    assert "Failed to load kube config" not in result.stderr and not (tmp_path / ".kfmagic" / "runs").exists()


def test_under_kfp_local_a_steps_end_follows_its_output_and_a_failure_names_its_log(tmp_path):
    notebook = tmp_path / "order.ipynb"
    nbformat.write(make_notebook([
        "%%step talk\nfor i in range(40):\n    print('line', i)\nsaid = 40",
        "%%step fail\nresult = said / 0",
    ]), notebook)
    result = kfmagic("run", str(notebook), "--runner", "kfp-local", cwd=tmp_path)
    talk = [line for line in result.stdout.splitlines() if line.startswith("[talk] ")]
    assert talk[-2:] == ["[talk] line 39", "[talk] done" + talk[-1][len("[talk] done"):]]
    assert [line for line in talk if "line" in line] == [f"[talk] line {i}" for i in range(40)]
    run_id = re.search(r"Run (pipeline-\S+) FAILED", result.stderr).group(1)
    log = tmp_path / ".kfmagic" / "runs" / run_id / "fail" / "log.txt"
    assert f"[fail] (run {run_id}, step 'fail' failed; its log: {log})" in result.stdout + result.stderr
    assert "ZeroDivisionError" in log.read_text() and f"`%pipeline pull fail {run_id}`" in result.stderr
