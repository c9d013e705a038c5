"""Shared test helpers: notebooks built from cell sources and executed in a real ipykernel."""

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make_notebook(sources):
    """A notebook whose code cells are `sources`, in order."""
    return new_notebook(
        cells=[new_code_cell(source) for source in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def execute(nb, cwd, allow_errors=False, timeout=300):
    """Run `nb` top to bottom in a fresh ipykernel with `cwd` as its working directory."""
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def cell_text(cell):
    """Everything a cell showed, as text: streams, results, displays and errors."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}\n" + "\n".join(output.traceback))
    return "\n".join(parts)


@pytest.fixture
def run_cells(tmp_path):
    """run_cells(sources, allow_errors=False) -> list of each cell's text output."""

    def run(sources, allow_errors=False):
        nb = execute(make_notebook(sources), tmp_path, allow_errors=allow_errors)
        return [cell_text(cell) for cell in nb.cells]

    return run


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Keep kfp's and IPython's per-user files out of the real home directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("IPYTHONDIR", str(home / ".ipython"))
