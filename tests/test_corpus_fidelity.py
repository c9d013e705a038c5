"""Corpus notebooks run both ways: top to bottom in a real kernel (nbclient), and with `kfmagic run`
(the CLI, every step its own process); the values the run keeps must be the kernel's, or the run
must name the step whose values are not. Each notebook (tests/corpus/make_corpus.py) reproduces a
public notebook's patterns: Kale's iris example seeded once in its imports cell; handson-ml2's
end-to-end chapter marked with magics as a new user would."""

import os
import pickle
import re
import shutil
import subprocess

import nbformat
import numpy as np
import pandas as pd
import pytest
from conftest import execute
from nbformat.v4 import new_code_cell

import kfmagic
from kfmagic import notebook

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def canonical(value):
    """A value as comparable data: arrays and frames as rounded lists, estimators by their fitted state."""
    if isinstance(value, np.ndarray):
        return ("array", value.round(9).tolist())
    if isinstance(value, (pd.DataFrame, pd.Series)):
        return (type(value).__name__, value.round(9).to_json())
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, type) or callable(value):  # a class or function of the notebook: by its name
        return (type(value).__name__, value.__qualname__)
    if hasattr(value, "get_params"):  # a scikit-learn estimator: its class, settings and what fitting set
        fitted = {k: v for k, v in vars(value).items() if k.endswith("_") and not k.startswith("_")}
        return (type(value).__qualname__, canonical(value.get_params(deep=False)), canonical(fitted))
    return value if isinstance(value, (int, str, bool, type(None))) else repr(type(value))


def top_to_bottom(folder, name, names):
    """{name: value} at the end of running the notebook's cells in order in a fresh kernel."""
    nb = nbformat.read(os.path.join(folder, name), 4)
    dump = os.path.join(folder, "top_to_bottom.pkl")
    nb.cells.append(new_code_cell(
        f"import cloudpickle as _cp\nwith open({dump!r}, 'wb') as _f:\n    _cp.dump({{n: globals()[n] for n in {names!r}}}, _f)"
    ))
    execute(nb, folder)
    with open(dump, "rb") as file:
        return pickle.load(file)


def as_a_pipeline(folder, name, names, monkeypatch):
    """({name: value} the run keeps, what `kfmagic run` printed on stderr)."""
    result = subprocess.run(["kfmagic", "run", name], cwd=folder, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = re.search(r"^run (\S+) \(local\)", result.stdout, re.M).group(1)
    monkeypatch.chdir(folder)
    run = kfmagic.open_run(run_id)
    return {n: run.load(n) for n in names}, result.stderr


@pytest.fixture
def corpus(tmp_path):
    return str(shutil.copytree(CORPUS, tmp_path / "corpus"))


def test_an_ordinary_notebook_marked_by_a_new_user_gives_the_kernels_values(corpus, monkeypatch):
    name = "magics_end_to_end_project.ipynb"
    plan = notebook.load(os.path.join(corpus, name))[0].plan()
    last = {var: step for step in sorted(plan.steps, key=lambda s: s.index) for var in step.assigns}
    names = sorted(var for var, step in last.items() if var in (*step.outputs, *step.keep))  # what the run keeps
    kernel = top_to_bottom(corpus, name, names)
    run, stderr = as_a_pipeline(corpus, name, names, monkeypatch)
    assert {n: canonical(v) for n, v in run.items()} == {n: canonical(v) for n, v in kernel.items()}
    assert {"CombinedAttributesAdder", "num_pipeline", "test_predictions", "strat_train_set", "forest_rmse_scores"} <= set(run)
    assert "drew random numbers" not in stderr  # each step that draws seeds first, as the chapter does
    assert [s.name for s in plan.steps if "np" in s.inputs] == []  # `import numpy as np` again chains nothing


def test_a_kale_notebook_seeded_once_names_the_step_whose_numbers_differ(corpus, monkeypatch):
    name, names = "kale_seeded_implicit_random.ipynb", ["x_trn", "accuracy", "preds"]
    kernel = top_to_bottom(corpus, name, names)
    run, stderr = as_a_pipeline(corpus, name, names, monkeypatch)
    assert canonical(run["x_trn"]) == canonical(kernel["x_trn"])  # the first step to draw draws as the notebook
    assert canonical(run["preds"]) != canonical(kernel["preds"])  # the forest's did not
    assert "warning: Step 'train_model' (after 'load_transform_data') drew random numbers from numpy's" in stderr
    assert "seeded by the %%prelude: np.random.seed(0)" in stderr


def test_a_kale_notebook_seeding_each_step_that_draws_gives_the_kernels_values(corpus, monkeypatch):
    name, names = "kale_seeded_implicit_random.ipynb", ["x_trn", "model", "accuracy", "preds"]
    path = os.path.join(corpus, name)
    nb = nbformat.read(path, 4)
    [train] = [cell for cell in nb.cells if "step:train_model" in cell.metadata.get("tags", [])]
    train.source = "np.random.seed(1)\n" + train.source  # what the warning advises
    nbformat.write(nb, path)
    kernel = top_to_bottom(corpus, name, names)
    run, stderr = as_a_pipeline(corpus, name, names, monkeypatch)
    assert {n: canonical(v) for n, v in run.items()} == {n: canonical(v) for n, v in kernel.items()}
    assert "drew random numbers" not in stderr


def test_a_kale_notebook_passing_xgboost_dmatrices_gives_the_kernels_values(corpus, monkeypatch):
    pytest.importorskip("xgboost", reason="the notebook trains with xgboost, not installed (the test extra has xgboost-cpu)")
    name, names = "kale_xgboost_dmatrix.ipynb", ["preds", "max_preds", "accuracy", "f1"]
    kernel = top_to_bottom(corpus, name, names)
    run, _ = as_a_pipeline(corpus, name, names, monkeypatch)
    assert {n: canonical(v) for n, v in run.items()} == {n: canonical(v) for n, v in kernel.items()}
    assert run["preds"].shape == (30, 3) and run["accuracy"] > 0.8  # a model trained on the DMatrix that travelled


def test_sections_drawing_from_one_generator_and_evaluating_text_give_the_kernels_values(corpus, monkeypatch):
    name, names = "magics_eval_query_sections.ipynb", ["summary", "result2", "my_df_loaded"]
    plan = notebook.load(os.path.join(corpus, name))[0].plan()
    kernel = top_to_bottom(corpus, name, names)
    os.remove(os.path.join(corpus, "my_df.csv"))  # the run writes its own
    run, _ = as_a_pipeline(corpus, name, names, monkeypatch)
    assert {n: canonical(v) for n, v in run.items()} == {n: canonical(v) for n, v in kernel.items()}
    assert [plan.step(s).inputs.get("rng") for s in ("frames", "small_frames", "df")] == ["arrays", "frames", "small_frames"]
    assert plan.step("eval_check").inputs == {"df1": "frames", "df2": "frames", "df3": "frames", "df4": "frames",
                                              "np": "arrays", "pd": "frames"}
    assert plan.step("eval_arith").inputs["np"] == "arrays" and "save" in plan.step("reload").upstream
