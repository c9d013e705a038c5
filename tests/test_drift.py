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
    assert "pipeline pipeline: 3 steps, no problems found." in out[-1]


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
