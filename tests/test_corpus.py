"""Notebooks as a new user brings them, through the `kfmagic` command.

Each notebook in tests/corpus/ is written for these tests and reproduces a pattern found in
public notebooks (Kubeflow Kale's examples, ordinary data-science notebooks): a feature loop
that changes two frames in place, `block:imports`, a `functions` cell reading a step's data,
`%matplotlib inline` in the prelude, Kale's newer settings. Each is run in a copy, so runs
leave nothing in the repository.
"""

import os
import shutil
import subprocess

import pytest

from kfmagic import notebook

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
NOTEBOOKS = sorted(name for name in os.listdir(CORPUS) if name.endswith(".ipynb"))
# The notebook's own fault: `check` says so (exit 1), everything else checks clean.
FAULTY = {"kale_step_split_around_others.ipynb", "kale_reads_skipped_cell.ipynb"}


@pytest.fixture
def corpus(tmp_path):
    return shutil.copytree(CORPUS, tmp_path / "corpus")


def kfmagic(*args, cwd):
    return subprocess.run(["kfmagic", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_check_reports_without_a_traceback(corpus, name):
    result = kfmagic("check", name, cwd=corpus)
    assert result.returncode == (1 if name in FAULTY else 0), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n.startswith("kale_") and n not in FAULTY])
def test_convert_keeps_the_kale_pipeline(corpus, name):
    assert kfmagic("convert", name, "-o", "converted.ipynb", cwd=corpus).returncode == 0
    original, converted = (kfmagic("show", path, cwd=corpus) for path in (name, "converted.ipynb"))
    assert (original.returncode, converted.returncode) == (0, 0), original.stderr + converted.stderr
    assert converted.stdout == original.stdout and "warning" not in converted.stderr


def run(corpus, name):
    result = kfmagic("run", name, "--workers", "2", cwd=corpus)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_loop_and_a_helper_that_change_frames_in_place_pass_the_changes_on(corpus):
    # data = [train_df, test_df]; for dataset in data: dataset['ratio'] = ... (Kale's titanic example)
    plan = notebook.load(str(corpus / "kale_loop_changes_frames.ipynb"))[0].plan()
    assert {var: plan.step("train").inputs[var] for var in ("train_df", "test_df")} == {
        "train_df": "featureengineering", "test_df": "featureengineering",
    }
    assert "accuracy=0.9" in run(corpus, "kale_loop_changes_frames.ipynb")


def test_block_imports_is_the_prelude_as_in_kale(corpus):
    show = kfmagic("show", "kale_block_imports.ipynb", cwd=corpus).stdout
    assert [line.split()[0] for line in show.splitlines()[3:6]] == ["make", "report", "listing"]
    assert "[report] the total from the step before is 10" in run(corpus, "kale_block_imports.ipynb")


def test_a_functions_cell_reads_the_step_data_it_uses(corpus):
    show = kfmagic("show", "kale_function_reads_step_data.ipynb", cwd=corpus)
    assert "data <- load" in show.stdout
    assert "`print(f'total is {total}')` reports no metric" in show.stderr
    assert "total=18" in run(corpus, "kale_function_reads_step_data.ipynb")


def test_a_prelude_helper_that_changes_its_argument_makes_its_step_the_provider(corpus):
    assert "grand=10" in run(corpus, "magics_helper_changes_argument.ipynb")


def test_matplotlib_inline_in_the_prelude_runs_in_step_processes(corpus):
    assert "[plot] <Figure size" in run(corpus, "magics_matplotlib_inline.ipynb")


def test_kale_settings_become_options_and_the_rest_is_said_once(corpus):
    converted = kfmagic("convert", "kale_settings_and_tags.ipynb", "-o", "out.ipynb", cwd=corpus)
    assert converted.stderr.count("access-rok") == 1 and "volumes are not applied" in converted.stderr
    text = open(os.path.join(corpus, "out.ipynb")).read()
    assert "--image python:3.11" in text  # base_image
    assert "%%step load_transform_data --no-cache" in text  # enable_caching: false
    assert "%%step train_model --after load_transform_data --cache" in text  # its own cache:enabled
    assert "report:disabled" in text  # another tool's tag stays


def test_a_step_split_around_other_steps_is_explained_in_kale_terms(corpus):
    result = kfmagic("check", "kale_step_split_around_others.ipynb", cwd=corpus)
    assert result.returncode == 1
    assert "Step 'evaluation' reads 'test_rows' in cell 4, below a cell of step 'preprocessing'" in result.stderr
    assert "Give cell 4 a step name of its own" in result.stderr
    assert "`--after S` is the tag prev:S" in result.stderr


def test_a_name_only_a_skipped_cell_assigns_names_the_cell_and_its_tag(corpus):
    result = kfmagic("check", "kale_reads_skipped_cell.ipynb", cwd=corpus)
    assert result.returncode == 1
    assert "Step 'double' reads 'base'" in result.stderr
    assert "The notebook's cell 2 assigns it, but that cell is not part of the pipeline: it is tagged skip." in result.stderr


def test_what_a_time_or_capture_cell_assigns_is_its_steps(corpus):
    assert "score=0.92" in run(corpus, "kale_time_magic_cell.ipynb")


def test_a_failing_tagged_cell_is_reported_with_its_own_line(corpus):
    result = kfmagic("run", "kale_step_raises.ipynb", cwd=corpus)
    assert result.returncode == 1
    assert 'File "step compute, cell 1", line 2' in result.stdout + result.stderr
    assert "Step 'compute' failed: ZeroDivisionError: division by zero" in result.stderr
    assert 'File "/' not in result.stdout + result.stderr  # only the cell's frames, none of kfmagic's


def test_names_a_run_script_defines_are_not_reported_missing(corpus):
    assert "doubled=22" in run(corpus, "magics_run_helper_script.ipynb")
