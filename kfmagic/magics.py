"""The IPython face of kfmagic: thin magics over the registry, and the hooks that feed it.

A marked cell must run exactly as it would without the magic (output, display, the value of its
last line, tracebacks with the user's frames only). So `%%step`, `%%prelude` and `%%params` cells
are not run as a cell magic's argument: an input transformer turns the magic line into a call of
the magic with no body, which registers the cell being run, and leaves the body to IPython as
ordinary cell code, on the same lines.
"""

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

import os

from . import display, drift, notebook, syntax
from .errors import KfmagicError
from .registry import current_pipeline, parse_param_overrides

_running = {"cell_id": None, "text": ""}  # the cell being run, as pre_run_cell saw it


def mark_cells(lines):
    """Input transformer: a first line `%%step ARGS` becomes `run_cell_magic('step', ARGS, None)`."""
    found = syntax.split_magic_line(lines[0]) if lines else None
    if found is None:
        return lines
    kind, line = found
    return [f"get_ipython().run_cell_magic({kind!r}, {line!r}, None)\n", *lines[1:]]


def _before_cell(info):
    """Remember the cell being run and its id; a cell that lost its magic leaves the pipeline."""
    cell_id = getattr(info, "cell_id", None)
    _running.update(cell_id=cell_id, text=info.raw_cell or "")
    if cell_id and syntax.split_magic_line(_running["text"]) is None:
        current_pipeline().forget_cell(cell_id)


def explain_missing(name):
    """Where the kernel got a name that no step provides: the unmarked cell that assigned it."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or name not in shell.user_ns:
        return None
    number = syntax.last_assigner(name, list(enumerate(shell.history_manager.input_hist_raw))[1:])
    if number is not None:
        return (
            f"The kernel has it from In [{number}], a cell that is not part of the pipeline: "
            "mark that cell with %%step (or move it to the %%prelude or %%params)."
        )
    return "The kernel has it, but no cell of the pipeline defines it: define it in a step, the %%prelude or %%params."


def notebook_path(shell):
    """The saved notebook this kernel runs: `%pipeline init --notebook`, else what the front-end tells.

    Jupyter Server passes it to ipykernel as JPY_SESSION_NAME (`__session__` in the namespace),
    VS Code as `__vsc_ipynb_file__`; the path may be relative to the server's root, so a file of
    that name in the kernel's directory is accepted too.
    """
    if current_pipeline().notebook_path:
        return current_pipeline().notebook_path
    told = (shell.user_ns.get("__session__"), shell.user_ns.get("__vsc_ipynb_file__"), os.environ.get("JPY_SESSION_NAME"))
    for candidate in told:
        if isinstance(candidate, str) and candidate.endswith(".ipynb"):
            for path in (candidate, os.path.basename(candidate)):
                if os.path.isfile(path):
                    return os.path.abspath(path)
    return None


def report_drift(pipeline, path):
    """Print where the kernel's registry and the saved notebook at `path` disagree."""
    if path is None:
        return
    try:
        saved, _ = notebook.load(path)
    except KfmagicError as error:
        print(f"drift check skipped: {error}")
        return
    found = drift.compare(pipeline.cells, saved.cells)
    if not found:
        print(f"The saved notebook {os.path.basename(path)} declares what the kernel registered.")
        return
    print(f"The saved notebook {os.path.basename(path)} differs from what the kernel registered:")
    for line in found:
        print(f"  - {line}")


def _cell_label(shell):
    """"In [N]" of the running cell: its input is already in the history when it runs (whereas
    IPython 9 increments execution_count before running a cell, and IPython 8 after)."""
    return f"In [{len(shell.history_manager.input_hist_raw) - 1}]"


def _register(shell, kind, line, cell):
    """Register a marked cell. `cell` is None when the transformer left the body to IPython: the
    cell is then the one being run; otherwise (a direct run_cell_magic call) run the body too."""
    text = _running["text"] if cell is None else f"%%{kind} {line}\n{cell}"
    spec = syntax.parse_cell(text)
    current_pipeline().add(spec, cell_id=_running["cell_id"], label=_cell_label(shell))
    if cell is not None:
        shell.run_cell(cell, store_history=False)


@magics_class
class KfMagics(Magics):
    @cell_magic
    def step(self, line, cell):
        _register(self.shell, "step", line, cell)

    @cell_magic
    def prelude(self, line, cell):
        _register(self.shell, "prelude", line, cell)

    @cell_magic
    def params(self, line, cell):
        _register(self.shell, "params", line, cell)

    def pipeline(self, line):
        pipeline = current_pipeline()
        args = syntax.parse_pipeline_line(line)
        if args.command == "init":
            pipeline.init(args.name, args.experiment, notebook=args.notebook, image=args.image)
        elif args.command == "show":
            return pipeline.show()
        elif args.command == "check":
            report_drift(pipeline, notebook_path(self.shell))
            print(display.check_text(pipeline.check()))
        elif args.command == "run":
            return pipeline.run(
                params=parse_param_overrides(args.param), workers=args.workers, runner=args.runner, wait=args.wait
            )
        elif args.command == "compile":
            print(f"wrote {pipeline.compile(args.output)}")
        elif args.command == "config":
            connection = pipeline.configure(
                args.host, args.namespace, args.experiment, args.token, args.token_path, args.cookies
            )
            print(f"%pipeline run submits to {connection.describe()}.")
        elif args.command == "status":
            return pipeline.status(args.run_id)
        elif args.command == "remove":
            pipeline.remove(args.name)
        elif args.command == "reset":
            pipeline.reset()
        return None

    pipeline.__doc__ = syntax.PIPELINE_HELP
    pipeline = line_magic(pipeline)


for _kind, _reference in syntax.CELL_MAGICS.items():
    getattr(KfMagics, _kind).__doc__ = _reference.__doc__


def load(shell):
    shell.register_magics(KfMagics)
    transforms = shell.input_transformer_manager.line_transforms
    if mark_cells not in transforms:
        transforms.insert(0, mark_cells)
    if _before_cell not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", _before_cell)
    current_pipeline().explain_missing = explain_missing


def unload(shell):
    transforms = shell.input_transformer_manager.line_transforms
    if mark_cells in transforms:
        transforms.remove(mark_cells)
    if _before_cell in shell.events.callbacks["pre_run_cell"]:
        shell.events.unregister("pre_run_cell", _before_cell)
