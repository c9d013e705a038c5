"""A saved notebook read without a kernel gives the kernel's pipeline; odd files are read as Jupyter writes them."""

import dataclasses
import json
import os
import pickle

import nbformat
import pytest
from conftest import REPO, execute

from kfmagic import notebook
from kfmagic.errors import KfmagicError, PlanError

DEMO = os.path.join(REPO, "notebooks", "demo_wine.ipynb")


def without_labels(plan):
    """A plan with the cells' labels blanked: a kernel says "In [5]" where a file says "cell 5"."""
    unlabel = lambda parts: tuple(dataclasses.replace(part, label="") for part in parts)  # noqa: E731
    steps = tuple(dataclasses.replace(step, parts=unlabel(step.parts)) for step in plan.steps)
    return dataclasses.replace(plan, prelude=unlabel(plan.prelude), steps=steps)


def summary(plan):
    """What a plan declares, as plain values to compare with an expectation written by hand: each
    cell by the first line of its code (below any magic line), edges, inputs, params, outputs."""

    def first_lines(parts):
        return [part.source.partition("\n")[2] if part.source.startswith("%%") else part.source for part in parts]

    return {
        "name": plan.name, "experiment": plan.experiment, "params": plan.params,
        "prelude": [code.splitlines()[0] for code in first_lines(plan.prelude)],
        "steps": {
            step.name: {
                "cells": [code.splitlines()[0] for code in first_lines(step.parts)],
                "after": set(step.after), "upstream": set(step.upstream), "inputs": step.inputs,
                "params": set(step.params), "outputs": set(step.outputs), "keep": set(step.keep),
                "metrics": set(step.metrics), "options": step.options,
            }
            for step in plan.steps
        },
        "order": [step.name for step in plan.steps],
    }


def step_summary(cells, after=(), inputs=None, params=(), outputs=(), keep=(), metrics=(), options=None, inferred=()):
    """One step of an expected summary; its upstream steps are its --after ones plus `inferred`."""
    return {
        "cells": cells, "after": set(after), "upstream": set(after) | set(inferred), "inputs": inputs or {},
        "params": set(params), "outputs": set(outputs), "keep": set(keep), "metrics": set(metrics),
        "options": options or {},
    }


SPLIT = ("X_train", "X_test", "y_train", "y_test")
DEMO_PLAN = {
    "name": "wine-classifiers", "experiment": "demos", "params": {"test_size": 0.25, "seed": 7, "n_trees": 200},
    "prelude": ["import pandas as pd"],
    "order": ["load", "prepare", "train_svm", "train_forest", "train_logreg", "compare"],
    "steps": {
        "load": step_summary(["wine = load_wine(as_frame=True)"], outputs=["frame"]),
        "prepare": step_summary(
            ["features = frame.drop(columns='target')"], inferred=["load"], inputs={"frame": "load"},
            params=["test_size", "seed"], outputs=SPLIT,
        ),
        "train_svm": step_summary(
            ["from sklearn.svm import SVC"], inferred=["prepare"], inputs=dict.fromkeys(SPLIT, "prepare"),
            params=["seed"], outputs=["svm", "svm_accuracy"], metrics=["svm_accuracy"],
        ),
        "train_forest": step_summary(
            ["from sklearn.ensemble import RandomForestClassifier"], inferred=["prepare"],
            inputs=dict.fromkeys(SPLIT, "prepare"), params=["n_trees", "seed"], outputs=["forest", "forest_accuracy"],
            metrics=["forest_accuracy"],
        ),
        "train_logreg": step_summary(
            ["from sklearn.linear_model import LogisticRegression"], inferred=["prepare"],
            inputs=dict.fromkeys(SPLIT, "prepare"), outputs=["logreg", "logreg_accuracy"], metrics=["logreg_accuracy"],
        ),
        "compare": step_summary(
            ["scores = {'svm': svm_accuracy, 'forest': forest_accuracy, 'logreg': logreg_accuracy}"],
            inferred=["train_svm", "train_forest", "train_logreg"],
            inputs={"svm_accuracy": "train_svm", "forest_accuracy": "train_forest", "logreg_accuracy": "train_logreg",
                    "svm": "train_svm", "forest": "train_forest", "logreg": "train_logreg"},
            outputs=["best_accuracy"], keep=["scores", "best_name", "best_model"], metrics=["best_accuracy"],
        ),
    },
}


def test_the_demo_file_gives_the_plan_its_kernel_builds(tmp_path):
    nb = nbformat.read(DEMO, as_version=4)
    cut = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and "%pipeline run" in cell.source)
    nb.cells = nb.cells[:cut]  # every declaration, none of the runs
    dump = tmp_path / "plan.pkl"
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import kfmagic, pickle\npickle.dump(kfmagic.pipeline().plan(), open({str(dump)!r}, 'wb'))"
    ))
    execute(nb, tmp_path)
    kernel_plan = pickle.loads(dump.read_bytes())
    file_pipeline, warnings = notebook.load(DEMO)
    assert warnings == []
    assert summary(kernel_plan) == DEMO_PLAN  # what the notebook declares, written down above
    assert without_labels(file_pipeline.plan()) == without_labels(kernel_plan)  # and the file gives the very same
    assert (kernel_plan.name, kernel_plan.experiment) == ("wine-classifiers", "demos")
    assert [part.label for step in file_pipeline.plan().steps for part in step.parts][0] == "cell 5"


def write_raw(path, cells, minor=4):
    """A notebook file written by hand, as old front-ends and other tools leave them."""
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": minor, "metadata": {}, "cells": cells}))
    return str(path)


def code(source, **extra):
    return {"cell_type": "code", "metadata": extra.pop("metadata", {}), "source": source,
            "outputs": [], "execution_count": None, **extra}


def test_old_files_list_sources_and_non_code_cells_are_read_like_the_kernel_reads_them(tmp_path):
    path = write_raw(tmp_path / "old.ipynb", [
        {"cell_type": "markdown", "metadata": {}, "source": ["# %%step not_code\n"]},
        {"cell_type": "raw", "metadata": {}, "source": "%%step raw_cell"},
        code(["%load_ext kfmagic\n", "%pipeline init old-file --experiment exp\n"]),
        code(""),
        code(["%%params\n", "n = 3"], metadata={"tags": None}),
        code(["%%step make\n", "values = list(range(n))\n", "%time values = values[::-1]"]),
        code("%%step add --after make\ntotal = sum(values)"),
    ])
    pipeline, warnings = notebook.load(path)
    plan = pipeline.plan()
    assert warnings == [] and (plan.name, plan.experiment) == ("old-file", "exp")
    assert [step.name for step in plan.steps] == ["make", "add"] and plan.params == {"n": 3}
    assert plan.step("add").inputs == {"values": "make"}
    assert not any(cell.has_id for cell in pipeline.cells)  # no ids before nbformat 4.5: known by position
    assert plan.step("make").parts[0].label == "cell 6"
    assert pipeline.notebook_path == os.path.abspath(path)


def test_a_name_only_an_unmarked_cell_assigns_is_explained_by_that_cell(tmp_path):
    path = write_raw(tmp_path / "nb.ipynb", [code("%load_ext kfmagic"), code("rate = 0.5"), code("%%step use\ny = rate * 2")])
    with pytest.raises(PlanError, match=r"cell 2 assigns it, but that cell is not part of the pipeline"):
        notebook.load(path)[0].plan()


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("not json at all", "is not a Jupyter notebook"),
    ('{"cells": 3}', "is not a Jupyter notebook"),
])
def test_unreadable_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "x.ipynb"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KfmagicError, match=message):
        notebook.load(str(path))


def test_a_bad_magic_line_names_its_cell(tmp_path):
    path = write_raw(tmp_path / "nb.ipynb", [code("x = 1"), code("%%step Bad-Name\ny = 2")], minor=5)
    with pytest.raises(KfmagicError, match=r"^cell 2: .*'Bad-Name' is not a valid name"):
        notebook.load(path)
