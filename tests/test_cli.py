"""The `kfmagic` command as a user runs it: a real subprocess, its exit status, stdout and stderr."""

import os
import shutil
import subprocess

import nbformat
import pytest
from conftest import REPO, make_notebook

DEMO = os.path.join(REPO, "notebooks", "demo_wine.ipynb")


def kfmagic(*args, cwd):
    return subprocess.run(["kfmagic", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [[], ["show"], ["check"], ["run"], ["compile"], ["convert"]])
def test_every_command_has_help(tmp_path, command):
    result = kfmagic(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: kfmagic")


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


@pytest.mark.parametrize("args, message", [
    (["run", "missing.ipynb"], "kfmagic run: missing.ipynb: no such file."),
    (["check", "text.ipynb"], "kfmagic check: text.ipynb is not a Jupyter notebook"),
    (["run", "nb/pipe.ipynb", "--param", "nope=1"], "--param nope: no such parameter."),
    (["run", "nb/pipe.ipynb", "--param", "scale"], "--param 'scale': write NAME=VALUE"),
    (["run", "nb/pipe.ipynb", "--param", "scale=big"], "expected a int like the default 2"),
    (["run", "nb/pipe.ipynb", "--workers", "0"], "--workers 0: at least one step"),
    (["convert", "nb/pipe.ipynb", "-o", "out.ipynb"], "no Kale tags to convert"),
])
def test_bad_input_is_one_message_on_stderr_and_exit_status_1(tmp_path, args, message):
    notebook_file(tmp_path, "%%params\nscale = 2", "%%step one\nx = scale")
    (tmp_path / "text.ipynb").write_text("just text")
    result = kfmagic(*args, cwd=tmp_path)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_plan_problems_and_failed_steps_exit_1_with_the_reason(tmp_path):
    notebook_file(tmp_path, "%%step one\ny = undefined_name + 1")
    check = kfmagic("check", "nb/pipe.ipynb", cwd=tmp_path)
    assert check.returncode == 1 and "Step 'one' reads 'undefined_name'" in check.stderr
    notebook_file(tmp_path, "%%step one\nraise ValueError('broken on purpose')", "%%step two --after one\nz = 1")
    run = kfmagic("run", "nb/pipe.ipynb", cwd=tmp_path)
    assert run.returncode == 1 and "Step 'one' failed: ValueError: broken on purpose" in run.stderr
    assert "Not run: two." in run.stderr


def test_a_malformed_command_line_exits_2(tmp_path):
    assert kfmagic("launch", DEMO, cwd=tmp_path).returncode == 2
    assert kfmagic("run", DEMO, "--runner", "cloud", cwd=tmp_path).returncode == 2


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
