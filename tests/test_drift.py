"""Drift between the kernel's registry and the saved notebook: the pure comparison, then `%pipeline check`
in a real kernel that finds the notebook by itself (JPY_SESSION_NAME) or is told (`--notebook`)."""

import nbformat
from conftest import make_notebook

from kfmagic import drift, syntax
from kfmagic.registry import Pipeline


def registry(*cells, label="In"):
    """A Pipeline holding `cells`, each (text, cell_id or None), in registration order."""
    pipeline = Pipeline()
    for number, (text, cell_id) in enumerate(cells, 1):
        pipeline.add(syntax.parse_cell(text), cell_id=cell_id, label=f"{label} [{number}]")
    return pipeline.cells


LOAD = "%%step load\ndata = [1, 2, 3]"
DOUBLE = "%%step double\ndoubled = [2 * x for x in data]"
TOTAL = "%%step total\ntotal = sum(doubled)"


def test_the_same_cells_do_not_drift_whether_known_by_id_or_by_text():
    saved = registry((LOAD, "a"), (DOUBLE, "b"), label="cell")
    assert drift.compare(registry((LOAD, "a"), (DOUBLE, "b")), saved) == []
    assert drift.compare(registry((LOAD, None), (DOUBLE, None)), saved) == []


def test_an_edited_cell_that_was_not_re_run_is_found_by_id_and_by_text():
    saved = registry((LOAD, "a"), (DOUBLE.replace("2 *", "3 *"), "b"), label="cell")
    for kernel in (registry((LOAD, "a"), (DOUBLE, "b")), registry((LOAD, None), (DOUBLE, None))):
        [found] = drift.compare(kernel, saved)
        assert "cell [2] (step 'double') was edited in the notebook but not re-run" in found


def test_a_step_deleted_from_the_file_and_a_cell_never_run_are_both_reported():
    found = drift.compare(registry((LOAD, "a"), (DOUBLE, "b")), registry((LOAD, "a"), (TOTAL, "c"), label="cell"))
    assert any("step 'double' (In [2]) is registered in the kernel but no longer in the saved notebook" in f for f in found)
    assert any("cell [2] (step 'total') is in the saved notebook but not registered in the kernel" in f for f in found)


def test_cells_registered_in_another_order_than_the_file_are_reported_once():
    found = drift.compare(
        registry((DOUBLE, None), (LOAD, None), (TOTAL, None)),
        registry((LOAD, "a"), (DOUBLE, "b"), (TOTAL, "c"), label="cell"),
    )
    assert len(found) == 1
    assert "registered cell [2] (step 'double') before cell [1] (step 'load')" in found[0]


def test_a_cell_id_on_one_side_only_falls_back_to_the_text():
    assert drift.compare(registry((LOAD, "x")), registry((LOAD, None), label="cell")) == []
    assert drift.compare(registry((LOAD, None)), registry((LOAD, "x"), label="cell")) == []


SAVED = ["%load_ext kfmagic", LOAD, DOUBLE.replace("2 *", "10 *"), "%pipeline check"]


def test_pipeline_check_in_a_kernel_finds_the_saved_notebook_and_reports_drift(run_cells, tmp_path, monkeypatch):
    path = tmp_path / "work.ipynb"
    nbformat.write(make_notebook(SAVED), path)
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))  # what Jupyter Server tells ipykernel
    out = run_cells(["%load_ext kfmagic", LOAD, DOUBLE, "%%step gone\nx = 1", "%pipeline check"])
    assert "The saved notebook work.ipynb differs from what the kernel registered" in out[-1]
    assert "cell 3 (step 'double') was edited in the notebook but not re-run: the kernel has the version of In [3]" in out[-1]
    assert "step 'gone' (In [4]) is registered in the kernel but no longer in the saved notebook" in out[-1]
    assert "the pipeline: 3 steps, no problems in what the kernel registered (the saved notebook differs: see above)." in out[-1]


def test_pipeline_check_compares_by_cell_id_with_the_notebook_it_is_told(kernel, tmp_path):
    path = tmp_path / "told.ipynb"
    nb = make_notebook(SAVED)
    nbformat.write(nb, path)
    ids = [cell.id for cell in nb.cells]
    assert kernel.run("%load_ext kfmagic")[0] == "ok"
    assert kernel.run(f"%pipeline init told --notebook {path}")[0] == "ok"
    for code, cell_id in ((LOAD, ids[1]), (DOUBLE.replace("2 *", "10 *"), ids[2])):
        assert kernel.run(code, cell_id)[0] == "ok"
    assert "declares what the kernel registered" in kernel.run("%pipeline check")[1]
    assert kernel.run(DOUBLE, ids[2])[0] == "ok"  # the same cell, run with other text than saved
    status, out = kernel.run("%pipeline check")
    assert status == "ok" and "cell 3 (step 'double') was edited in the notebook but not re-run" in out


def test_each_finding_is_one_full_sentence_with_its_fix():
    saved = registry(("%%prelude\nimport os", None), (LOAD, None), (TOTAL, None), label="cell")
    kernel = registry(("%%prelude\nimport sys", None), (LOAD, None), ("%%step gone\nx = 1", None), (DOUBLE, None))
    assert drift.compare(kernel, saved) == [
        "cell [1] (%%prelude) was edited in the notebook but not re-run: the kernel has the version of In [1]. "
        "Run it again.",
        "cell [3] (step 'total') is in the saved notebook but not registered in the kernel: run it.",
        "step 'gone' (In [3]) is registered in the kernel but no longer in the saved notebook: `%pipeline remove gone`.",
        "step 'double' (In [4]) is registered in the kernel but no longer in the saved notebook: "
        "`%pipeline remove double`.",
    ]


def test_a_deleted_cell_of_a_step_still_in_the_file_and_a_deleted_prelude_say_to_reset():
    saved = registry((LOAD, None), label="cell")
    kernel = registry(("%%prelude\nimport os", None), (LOAD, None), ("%%step load\nmore = 1", None))
    assert drift.compare(kernel, saved) == [
        f"In [{number}] ({what}) is registered in the kernel but not in the saved notebook (deleted, or its magic "
        "removed): `%pipeline reset` and re-run the notebook's cells."
        for number, what in ((1, "%%prelude"), (3, "step 'load'"))
    ]


def test_the_order_finding_names_both_cells_and_the_fix():
    found = drift.compare(registry((DOUBLE, None), (LOAD, None)), registry((LOAD, None), (DOUBLE, None), label="cell"))
    assert found == [
        "The kernel registered cell [2] (step 'double') before cell [1] (step 'load'), the opposite of the "
        "notebook's order, which decides where each step's inputs come from: `%pipeline reset` and run the "
        "cells top to bottom."
    ]


def test_two_cells_of_one_step_are_told_apart_by_their_text_then_by_their_ids():
    first, second = "%%step prep\nclean = 1", "%%step prep\nscaled = clean * 2"
    # by text: the same two cells, registered in the other order, are one order finding and no edit
    [found] = drift.compare(registry((second, None), (first, None)), registry((first, None), (second, None), label="cell"))
    assert found.startswith("The kernel registered cell [2] (step 'prep') before cell [1] (step 'prep')")
    # by id: each edited cell is compared with the kernel's version of that very cell
    kernel = registry((first, "x"), (second, "y"))
    saved = registry((second.replace("2", "3"), "y"), (first.replace("1", "5"), "x"), label="cell")
    assert drift.compare(kernel, saved) == [
        "cell [1] (step 'prep') was edited in the notebook but not re-run: the kernel has the version of In [2]. "
        "Run it again.",
        "cell [2] (step 'prep') was edited in the notebook but not re-run: the kernel has the version of In [1]. "
        "Run it again.",
        "The kernel registered cell [2] (step 'prep') before cell [1] (step 'prep'), the opposite of the notebook's "
        "order, which decides where each step's inputs come from: `%pipeline reset` and run the cells top to bottom.",
    ]


def test_trailing_spaces_are_not_an_edit_but_indentation_is():
    saved = registry(("%%step a\nif True:\n    x = 1", None), label="cell")
    assert drift.compare(registry(("%%step a  \nif True:   \n    x = 1\n\n", None)), saved) == []
    [found] = drift.compare(registry(("%%step a\nif True:\n        x = 1", None)), saved)
    assert found.startswith("cell [1] (step 'a') was edited in the notebook but not re-run")
