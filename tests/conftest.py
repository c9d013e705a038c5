"""Shared test helpers: notebooks built from cell sources and executed in a real ipykernel."""

import os
import sys
import tracemalloc

import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kfp_server import kfp_server  # noqa: E402,F401  (the loopback KFP server fixture, for every test module)


def make_notebook(sources):
    """A notebook whose code cells are `sources`, in order."""
    return new_notebook(
        cells=[new_code_cell(source) for source in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def tagged_notebook(*cells, metadata=None):
    """A notebook of (source, tag, ...) code cells, Kale's way of marking; a str alone is markdown."""
    made = [
        new_markdown_cell(cell) if isinstance(cell, str)
        else new_code_cell(cell[0], metadata={"tags": list(cell[1:])} if len(cell) > 1 else {})
        for cell in cells
    ]
    return new_notebook(cells=made, metadata=metadata or {})


def execute(nb, cwd, allow_errors=False, timeout=300):
    """Run `nb` top to bottom in a fresh ipykernel with `cwd` as its working directory."""
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def traced_peak(call):
    """What `call()` returns, and the most memory Python allocated while it ran (tracemalloc)."""
    tracemalloc.start()
    try:
        value = call()
        return value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


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


class Kernel:
    """A live ipykernel driven message by message, for what nbclient cannot send (cell ids, interrupts)."""

    def __init__(self, cwd):
        from jupyter_client.manager import start_new_kernel

        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(cwd))

    def send(self, code, cell_id=None):
        """Send an execute request (with JupyterLab's cellId metadata when given); returns its msg id."""
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        msg = self.client.session.msg("execute_request", content, metadata={"cellId": cell_id} if cell_id else {})
        self.client.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def collect(self, msg_id, timeout=120):
        """(status, text shown) once the kernel is idle after `msg_id`."""
        parts = []
        while True:
            message = self.client.get_iopub_msg(timeout=timeout)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                parts.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                parts.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                parts.append(f"{content['ename']}: {content['evalue']}\n" + "\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                break
        while True:
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]["status"], "".join(parts)

    def run(self, code, cell_id=None):
        return self.collect(self.send(code, cell_id))

    def shutdown(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path):
    live = Kernel(tmp_path)
    yield live
    live.shutdown()
