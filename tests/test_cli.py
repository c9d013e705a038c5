"""The `kfmagic` command as a user runs it: a real subprocess, its exit status, stdout and stderr;
its help, signals, a closed output and credentials on the command line.

Bad input of every kind (files, cells, command lines) is the table of tests/test_bad_input.py.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import nbformat
import psutil
import pytest
from conftest import REPO, make_notebook, tagged_notebook

from kfmagic.cli import main

DEMO = os.path.join(REPO, "notebooks", "demo_wine.ipynb")
CONNECTION = ["--host HOST", "--namespace NAMESPACE", "--experiment EXPERIMENT", "--token TOKEN", "--token-path FILE", "--cookies COOKIES"]
HELP = {  # each command's own description and every option it takes
    (): ("Build, check, run and compile the pipeline a saved notebook declares (kfmagic magics or Kubeflow Kale "
         "tags), without a kernel and without running its cells.", ["show", "check", "run", "compile", "convert"]),
    ("show",): ("Print the steps, their inputs, outputs and params, and the DAG.", ["NOTEBOOK.ipynb"]),
    ("check",): ("Report every problem of the pipeline without running anything.", ["NOTEBOOK.ipynb"]),
    ("run",): ("Run the pipeline, in the notebook's directory so that relative paths mean what they mean there.",
               ["NOTEBOOK.ipynb", "--param NAME=VALUE", "--workers WORKERS", "--runner {local,kfp-local,kfp}", "--local",
                "--wait", *CONNECTION]),
    ("compile",): ("Compile the pipeline to Kubeflow Pipelines IR YAML.", ["NOTEBOOK.ipynb", "-o PATH, --output PATH", *CONNECTION]),
    ("convert",): ("Rewrite a Kubeflow Kale-tagged notebook with kfmagic magics (the same pipeline).",
                   ["NOTEBOOK.ipynb", "-o OUT.ipynb, --output OUT.ipynb"]),
}


def kfmagic(*args, cwd):
    return subprocess.run(["kfmagic", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", list(HELP), ids=lambda command: " ".join(command) or "kfmagic")
def test_every_command_has_its_own_help(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "250")  # argparse wraps at the terminal's width
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    shown = capsys.readouterr().out
    description, options = HELP[command]
    assert exited.value.code == 0 and shown.startswith(f"usage: kfmagic {' '.join(command)}".rstrip())
    assert description in shown
    assert [option for option in options if option not in shown] == []


def test_the_installed_command_answers_help(tmp_path):
    result = kfmagic("--help", cwd=tmp_path)
    assert result.returncode == 0 and HELP[()][0] in result.stdout.replace("\n", " ")


def test_show_and_check_read_the_demo_without_running_it(tmp_path):
    notebook_dir = tmp_path / "nb"
    notebook_dir.mkdir()
    demo = shutil.copy(DEMO, notebook_dir)
    show = kfmagic("show", demo, cwd=tmp_path)
    assert show.returncode == 0 and "train_forest" in show.stdout and "params: test_size=0.25" in show.stdout
    check = kfmagic("check", demo, cwd=tmp_path)
    assert (check.returncode, check.stdout.strip()) == (0, "pipeline wine-classifiers: 6 steps, no problems found.")
    assert sorted(os.listdir(tmp_path)) == ["home", "nb"] and os.listdir(notebook_dir) == ["demo_wine.ipynb"]


def test_the_demo_runs_from_another_directory(tmp_path):
    shutil.copy(DEMO, tmp_path)
    result = kfmagic("run", "demo_wine.ipynb", "--param", "n_trees=20", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[load] 178 wines, 3 cultivars" in result.stdout and "[compare] best:" in result.stdout
    assert "best_accuracy=" in result.stdout and "Traceback" not in result.stderr


def notebook_file(tmp_path, *sources):
    path = tmp_path / "nb" / "pipe.ipynb"
    path.parent.mkdir(exist_ok=True)
    nbformat.write(make_notebook(["%load_ext kfmagic", *sources]), path)
    return path


def test_a_run_reads_relative_paths_from_the_notebooks_directory(tmp_path):
    path = notebook_file(tmp_path, "%%params\nscale = 2", "%%step read --metrics total\ntotal = scale * len(open('data.txt').read())")
    (path.parent / "data.txt").write_text("abcd")
    result = kfmagic("run", str(path), "--param", "scale=10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "total=40" in result.stdout and (path.parent / ".kfmagic" / "runs").is_dir()


def test_a_prelude_imports_modules_beside_the_notebook_when_the_command_runs_elsewhere(tmp_path):
    # The run's supervisor starts before the command has read the notebook (in the folder the command
    # was started from); the prelude it runs still finds the notebook's own modules first.
    path = notebook_file(tmp_path, "%%prelude\nimport helpers", "%%step use --metrics value\nvalue = helpers.VALUE * 2")
    (path.parent / "helpers.py").write_text("VALUE = 21\n")
    (tmp_path / "helpers.py").write_text("VALUE = -1  # where the command starts: not the notebook's\n")
    result = kfmagic("run", "nb/pipe.ipynb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "value=42" in result.stdout and "fresh process" not in result.stderr


def test_plan_problems_and_failed_steps_exit_1_with_the_reason(tmp_path):
    notebook_file(tmp_path, "%%step one\ny = undefined_name + 1")
    check = kfmagic("check", "nb/pipe.ipynb", cwd=tmp_path)
    assert check.returncode == 1 and "Step 'one' reads 'undefined_name'" in check.stderr
    notebook_file(tmp_path, "%%step one\nraise ValueError('broken on purpose')", "%%step two --after one\nz = 1")
    run = kfmagic("run", "nb/pipe.ipynb", cwd=tmp_path)
    assert run.returncode == 1 and "Step 'one' failed: ValueError: broken on purpose" in run.stderr
    assert "Not run: two." in run.stderr


def test_compile_writes_ir_yaml_where_asked(tmp_path):
    result = kfmagic("compile", DEMO, "-o", "out.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'out.yaml'}" in result.stdout
    assert "# Name: wine-classifiers" in (tmp_path / "out.yaml").read_text()


def test_the_kfp_local_runner_and_connection_options_reach_the_pipeline(tmp_path):
    path = notebook_file(tmp_path, "%%step one --metrics x\nx = 3")
    local = kfmagic("run", str(path), "--runner", "kfp-local", cwd=tmp_path)
    assert local.returncode == 0 and "x=3" in local.stdout, local.stderr
    dead = kfmagic("run", str(path), "--host", "http://127.0.0.1:9", "--token", "secret-token", cwd=tmp_path)
    assert dead.returncode == 1 and "127.0.0.1:9" in dead.stderr and "secret-token" not in dead.stderr + dead.stdout


def test_a_token_on_the_command_line_is_accepted_with_one_warning(tmp_path, capsys):
    path = str(notebook_file(tmp_path, "%%step one\nx = 1"))
    assert main(["compile", path, "-o", str(tmp_path / "a.yaml"), "--token", "T0KEN-VALUE"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "every user of this machine can read it" in err, err
    assert "--token-path FILE" in err and "$KF_PIPELINES_SA_TOKEN_PATH" in err and "T0KEN-VALUE" not in err
    assert main(["compile", path, "-o", str(tmp_path / "b.yaml")]) == 0
    assert "warning" not in capsys.readouterr().err


def gone(process):
    """Whether a process has ended (a zombie waiting for init to reap it has ended too)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(path, parts, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().split()) == parts:
            return [psutil.Process(int(pid)) for pid in path.read_text().split()]
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def stop_leftovers(processes):
    """If the test failed, leave no process behind (only those this test started)."""
    for process in processes:
        if not gone(process):
            process.kill()


SLOW_STEP = (
    "%%step slow\nimport os, subprocess, time\nchild = subprocess.Popen(['sleep', '60'])\n"
    "open('pids', 'w').write(f'{os.getpid()} {child.pid}')\ntime.sleep(60)"
)


@pytest.mark.parametrize("signum, status, said", [
    (signal.SIGTERM, 143, "stopped by SIGTERM"),  # timeout(1), a CI cancel
    (signal.SIGHUP, 129, "stopped by SIGHUP"),  # the terminal closed
    (signal.SIGINT, 130, "interrupted (Ctrl-C)"),
], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_stops_the_run_and_every_process_of_its_steps(tmp_path, signum, status, said):
    path = notebook_file(tmp_path, SLOW_STEP)
    command = subprocess.Popen(["kfmagic", "run", str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps = wait_for(path.parent / "pids", 2)  # the step's process and the `sleep` it started
    try:
        command.send_signal(signum)
        out, err = command.communicate(timeout=60)
        assert command.returncode == status
        [line] = err.splitlines()
        runs = path.parent / ".kfmagic" / "runs"
        assert line == f"kfmagic run: {said}: every step process was stopped; outputs of finished steps are kept in {runs / os.listdir(runs)[0]}."
        assert "kernel" not in out + err and "[slow] canceled" in out
        assert [process.pid for process in steps if not gone(process)] == []
    finally:
        stop_leftovers(steps)


def closed_pipe(monkeypatch, name="stdout"):
    """sys.stdout (or stderr) is a pipe whose reader has gone, as in `kfmagic show NB | head -0`."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = open(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, name, stream)
    return stream


@pytest.mark.parametrize("command", ["show", "check", "run", "compile", "convert"])
def test_output_closed_by_its_reader_ends_every_command_quietly(tmp_path, capsys, monkeypatch, command):
    if command == "convert":
        path = tmp_path / "kale.ipynb"
        nbformat.write(tagged_notebook(("x = 1", "step:one")), path)
    else:
        path = notebook_file(tmp_path, "%%step one\nx = 1")
    stream = closed_pipe(monkeypatch)
    output = {"compile": ["-o", str(tmp_path / "out.yaml")], "convert": ["-o", str(tmp_path / "out.ipynb")]}.get(command, [])
    status = main([command, str(path), *output])
    stream.close()
    assert (status, capsys.readouterr().err) == (128 + signal.SIGPIPE, "")


def test_a_message_to_a_closed_stderr_is_dropped_quietly(tmp_path, monkeypatch):
    (tmp_path / "text.ipynb").write_text("just text")
    stream = closed_pipe(monkeypatch, "stderr")  # `kfmagic check text.ipynb 2>&1 | head -0`
    assert main(["check", str(tmp_path / "text.ipynb")]) == 1
    assert main(["launch"]) == 2
    stream.close()


CHATTY_STEP = (
    "%%step chatty\nimport os, time\nopen('pids', 'w').write(str(os.getpid()))\n"
    "for i in range(6000):\n    print(i, 'x' * 1000, flush=True)\n    time.sleep(0.01)"
)


def test_a_run_whose_output_is_closed_stops_its_steps_quietly(tmp_path):
    path = notebook_file(tmp_path, CHATTY_STEP)
    command = subprocess.Popen(["kfmagic", "run", str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert command.stdout.readline().startswith("run ")  # `| head -1`: one line, then the reader goes
    [step] = wait_for(path.parent / "pids", 1)
    try:
        command.stdout.close()
        _, err = command.communicate(timeout=60)
        assert (command.returncode, err) == (128 + signal.SIGPIPE, "")
        assert gone(step)
    finally:
        stop_leftovers([step])


def test_the_cli_never_speaks_of_the_kernel(tmp_path, capsys):
    path = notebook_file(tmp_path, "%%step one\nraise ValueError('broken on purpose')")
    assert main(["run", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "Step 'one' failed: ValueError: broken on purpose" in err and "kernel" not in out + err
