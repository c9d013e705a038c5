"""Kubeflow Kale's tags read as kfmagic magics: tags -> registry, `convert` round trip, the example notebook."""

import dataclasses
import io
import os
import pickle
import shutil
import subprocess

import nbformat
import pytest
from conftest import REPO, cell_text, execute, tagged_notebook
from nbformat.v4 import new_code_cell
from test_notebook import step_summary, summary, without_labels

from kfmagic import kale, notebook
from kfmagic.errors import KfmagicError

KALE_IRIS = os.path.join(REPO, "notebooks", "kale_iris.ipynb")
SPLIT = ("X_train", "X_test", "y_train", "y_test")
# What kale_iris.ipynb's tags declare, read off its cells by hand: `prev:` edges that carry no
# data (audit after split_data, report after audit) are kept; the untagged cell 7 joins load_data.
IRIS_PLAN = {
    "name": "kale-iris", "experiment": "kale-demos",
    "params": {"test_size": 0.3, "seed": 42, "n_neighbors": 5, "max_depth": 3},
    "prelude": ["import time", "def accuracy(model, X, y):"],
    "order": ["load_data", "split_data", "train_knn", "train_tree", "audit", "report"],
    "steps": {
        "load_data": step_summary(["iris = load_iris(as_frame=True)", "print('rows:', len(data))"], outputs=["data"]),
        "split_data": step_summary(
            ["features = data.drop(columns='target')"], after=["load_data"], inputs={"data": "load_data"},
            params=["test_size", "seed"], outputs=SPLIT,
        ),
        "train_knn": step_summary(
            ["knn = KNeighborsClassifier(n_neighbors=n_neighbors).fit(X_train, y_train)"], after=["split_data"],
            inputs=dict.fromkeys(SPLIT, "split_data"), params=["n_neighbors"], outputs=["knn_accuracy"],
            metrics=["knn_accuracy"], options={"cpu": "1", "memory": "1Gi"},
        ),
        "train_tree": step_summary(
            ["tree = DecisionTreeClassifier(max_depth=max_depth, random_state=seed).fit(X_train, y_train)"],
            after=["split_data"], inputs=dict.fromkeys(SPLIT, "split_data"), params=["max_depth", "seed"],
            outputs=["tree_accuracy"], metrics=["tree_accuracy"],
        ),
        "audit": step_summary(["%time started = time.time()"], after=["split_data"]),
        "report": step_summary(
            ["best_accuracy = max(knn_accuracy, tree_accuracy)"], after=["train_knn", "train_tree", "audit"],
            inputs={"knn_accuracy": "train_knn", "tree_accuracy": "train_tree"}, outputs=["best_accuracy"],
            keep=["best"], metrics=["best_accuracy"],
        ),
    },
}
# The magic line `convert` puts above each code cell of kale_iris.ipynb (None: the cell stays plain).
IRIS_MAGIC_LINES = [
    "%%prelude", "%%prelude", "%%params", "%%step load_data", "%%step load_data", None,
    "%%step split_data --after load_data",
    "%%step train_knn --after split_data --metrics knn_accuracy --cpu 1 --memory 1Gi",
    "%%step train_tree --after split_data --metrics tree_accuracy",
    "%%step audit --after split_data",
    "%%step report --after train_knn train_tree audit --metrics best_accuracy",
    None,
]


def as_cells(plan):
    """without_labels, each part as its cell's own code: a tagged cell has no magic line above it,
    so its line numbers (in errors and tracebacks) are the cell's."""

    def own(part):
        if not part.source.startswith("%%"):
            return part
        return dataclasses.replace(part, source=part.source.partition("\n")[2], code=part.code[1:])

    plan = without_labels(plan)
    steps = tuple(dataclasses.replace(step, parts=tuple(map(own, step.parts))) for step in plan.steps)
    return dataclasses.replace(plan, prelude=tuple(map(own, plan.prelude)), steps=steps)


def tagged(*cells, metadata=None):
    return tagged_notebook(*cells, metadata={"kubeflow_notebook": metadata or {}})


def test_tags_give_prelude_params_steps_and_continuations_as_kale_reads_them():
    nb = tagged(
        ("x_before = 1",),  # untagged before any block: not in the pipeline
        (" import math ", "Imports"),
        ("def half(v):\n    return v / 2", "functions"),
        ("rate = 0.5", " pipeline-parameters "),
        "## markdown does not end a block",
        ("data = [1, 2, 3]", "block:Load Data"),
        ("explore = 1", "skip"),
        ("%time data = data + [4]\n!echo more",),  # joins `load_data`, through the skip cell
        ("",),
        ("scaled = [half(v) * rate for v in data]", "step: scale ", "prev:Load Data", "parameters"),
        ("extra = 1", "block:", "prev:load_data"),  # `block:` without a name continues `scale`
        ("side = 2", "step:side", "PREV:scale"),
        ("print(scaled)\nprint(rate)\nprint(nothing)", "pipeline-metrics"),
        metadata={"pipeline_name": "My Pipeline", "experiment_name": "exp one"},
    )
    translation = kale.translate(nb)
    pipeline, warnings = notebook.from_notebook(nb)
    plan = pipeline.plan()
    assert (plan.name, plan.experiment) == ("my_pipeline", "exp one")
    assert [step.name for step in plan.steps] == ["load_data", "scale", "side"]
    assert len(plan.step("load_data").parts) == 2 and plan.params == {"rate": 0.5}
    assert plan.step("scale").inputs == {"data": "load_data"} and plan.step("scale").metrics == ("scaled", "rate")
    assert plan.step("scale").after == ("load_data",) and plan.step("side").after == ("scale",)
    assert translation.texts[0] is None and translation.texts[6] is None  # before any block; skip
    assert translation.texts[10].startswith("%%step scale --after load_data\n")
    assert not any("'rate' is not reported" in w for w in warnings)  # the parameter: scale's, which uses it
    assert any("'nothing' is not reported as a metric: no step assigns it" in w for w in warnings)
    assert any("'Load Data' is named 'load_data'" in w for w in warnings)


def test_an_edge_that_carries_no_data_is_kept():
    nb = tagged(("a = 1", "step:first"), ("print('no data read')", "step:second", "prev:first"))
    plan = notebook.from_notebook(nb)[0].plan()
    assert plan.step("second").upstream == ("first",) and plan.step("second").inputs == {}


def test_names_that_normalise_alike_are_one_step_whichever_spelling_prev_uses():
    nb = tagged(("a = 1", "step:Train Model"), ("b = 2", "step:train_model"), ("c = a + b", "step:1st", "prev:TRAIN MODEL"))
    plan = notebook.from_notebook(nb)[0].plan()
    assert [step.name for step in plan.steps] == ["train_model", "step_1st"]
    assert len(plan.step("train_model").parts) == 2 and plan.step("step_1st").after == ("train_model",)


def test_limits_image_and_cache_become_step_options_and_the_rest_is_a_warning():
    nb = tagged(
        ("a = 1", "step:gpu", "limit:nvidia.com/gpu:2", "limit:memory:4Gi", "limit:cpu:2", "image:python:3.11",
         "cache:disabled", "limit:ephemeral-storage:1Gi", "annotation:team:ml"),
        ("b = a", "step:plain"),
        metadata={"steps_defaults": ["limit:cpu:1"]},
    )
    pipeline, warnings = notebook.from_notebook(nb)
    options = pipeline.plan().step("gpu").options
    assert (options["gpu"], options["gpu_type"], options["memory"], options["cpu"]) == (2, "nvidia.com/gpu", "4Gi", "2")
    assert (options["image"], options["cache"]) == ("python:3.11", False)
    assert pipeline.plan().step("plain").options["cpu"] == "1"  # the notebook's steps_defaults
    assert any("limit:ephemeral-storage:1Gi is not applied" in w for w in warnings)
    assert any("annotation:team:ml is not applied" in w for w in warnings)


def test_a_cell_with_two_step_tags_is_a_clear_error():
    with pytest.raises(KfmagicError, match="cell 1: tagged with several steps"):
        notebook.from_notebook(tagged(("a = 1", "step:one", "step:two")))


def test_a_notebook_with_magics_ignores_kale_tags():
    nb = tagged(("%%step magic\na = 1", "step:tagged"))
    assert [step.name for step in notebook.from_notebook(nb)[0].plan().steps] == ["magic"]


def old_format_copy(path, tmp_path):
    """The notebook as nbformat 4.4 writes it: no cell ids."""
    nb = nbformat.read(path, as_version=4)
    nb.nbformat_minor = 4
    for cell in nb.cells:
        cell.pop("id", None)
    copy = tmp_path / "old" / os.path.basename(path)
    copy.parent.mkdir()
    nbformat.write(nb, copy)
    return str(copy)


def kfmagic(*args, cwd):
    return subprocess.run(["kfmagic", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("old_format", [False, True])
def test_convert_writes_magics_that_declare_the_same_plan(tmp_path, old_format):
    source = old_format_copy(KALE_IRIS, tmp_path) if old_format else KALE_IRIS
    out = tmp_path / "converted.ipynb"
    result = kfmagic("convert", source, "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    converted = nbformat.read(out, as_version=4)
    assert not kale.is_tagged(converted) and notebook.uses_magics(converted)
    assert converted.cells[0].source == "%load_ext kfmagic\n%pipeline init kale-iris --experiment kale-demos"
    original = nbformat.read(source, as_version=4).cells
    assert [cell.cell_type for cell in converted.cells[1:]] == [cell.cell_type for cell in original]
    code_pairs = [(new, old) for new, old in zip(converted.cells[1:], original) if old.cell_type == "code"]
    assert [new.source for new, _ in code_pairs] == [  # each cell's code untouched below its magic line
        f"{line}\n{old.source}" if line else old.source for (_, old), line in zip(code_pairs, IRIS_MAGIC_LINES, strict=True)
    ]
    assert summary(notebook.load(source)[0].plan()) == IRIS_PLAN
    assert summary(notebook.load(str(out))[0].plan()) == IRIS_PLAN
    assert as_cells(notebook.load(str(out))[0].plan()) == as_cells(notebook.load(source)[0].plan())


def test_the_kale_example_runs_with_the_cli(tmp_path):
    work = tmp_path / "nb"
    work.mkdir()
    shutil.copy(KALE_IRIS, work)
    result = kfmagic("run", "nb/kale_iris.ipynb", "--param", "max_depth=1", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[load_data] iris loaded" in result.stdout  # a `!` line ran inside the step
    assert "[audit] audit: the split is done" in result.stdout
    accuracies = {line.split()[0]: line.split()[-1] for line in result.stdout.splitlines() if "accuracy=" in line}
    assert set(accuracies) == {"train_knn", "train_tree", "report"}
    assert float(accuracies["train_tree"].split("=")[1]) < 0.8  # a stump cannot tell three species apart
    assert (work / ".kfmagic" / "runs").is_dir() and not (tmp_path / ".kfmagic").exists()
    assert "'Split Data' is named 'split_data'" in result.stderr


def test_the_kale_example_and_its_conversion_run_in_a_kernel(tmp_path):
    plain = execute(nbformat.read(KALE_IRIS, as_version=4), tmp_path)
    assert "best: tree" in cell_text(plain.cells[-2]) or "best: knn" in cell_text(plain.cells[-2])
    converted, _ = kale.convert(nbformat.read(KALE_IRIS, as_version=4), "kale_iris")
    dump = tmp_path / "plan.pkl"
    converted.cells.append(new_code_cell("%pipeline check"))
    converted.cells.append(new_code_cell(
        f"import kfmagic, pickle\npickle.dump(kfmagic.pipeline().plan(), open({str(dump)!r}, 'wb'))"
    ))
    ran = execute(converted, tmp_path)
    assert "pipeline kale-iris: 6 steps, no problems found." in cell_text(ran.cells[-2])
    kernel_plan = pickle.loads(dump.read_bytes())
    assert summary(kernel_plan) == IRIS_PLAN
    assert as_cells(kernel_plan) == as_cells(notebook.load(KALE_IRIS)[0].plan())


def test_errors_in_tagged_cells_count_the_cells_own_lines():
    params = tagged(("a = 1\nb = os.getcwd()", "pipeline-parameters"), ("x = a", "step:s"))
    with pytest.raises(KfmagicError, match=r"^cell 1: pipeline-parameters line 2: `b = os.getcwd\(\)`"):
        notebook.from_notebook(params)
    step = tagged(("y = 1\nx = (", "step:s"))
    with pytest.raises(KfmagicError, match=r"^Step 's' \(cell 1\): line 2: '\(' was never closed$"):
        notebook.from_notebook(step)[0].plan()


def test_printed_parameters_are_metrics_of_the_last_step_that_uses_them_as_in_kale(tmp_path, monkeypatch):
    """Kale's pipeline_parameters_and_metrics example: d1 and d2 are create_matrix's metrics (it reads
    them), the sum is sum_matrix's; their values are those of the run (with --param overrides)."""
    monkeypatch.chdir(tmp_path)
    nb = tagged_notebook(
        ("import numpy as np", "imports"),
        ("d1 = 5\nd2 = 6", "pipeline-parameters"),
        ("rnd_matrix = np.ones((d1, d2))", "step:create_matrix"),
        ("sum_result = float(rnd_matrix.sum())", "step:sum_matrix", "prev:create_matrix"),
        ("print(d1)\nprint(d2)\nprint(sum_result)", "pipeline-metrics"),
    )
    pipeline, warnings = notebook.from_notebook(nb, "matrix")
    assert warnings == []
    from kfmagic.display import TextProgress

    run = pipeline.run(params={"d1": "2"}, progress=TextProgress(io.StringIO()))
    assert run.metrics == {"create_matrix": {"d1": 2.0, "d2": 6.0}, "sum_matrix": {"sum_result": 12.0}}
