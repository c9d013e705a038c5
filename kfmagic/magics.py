"""The IPython face of kfmagic: thin magics over the registry, and the hooks that feed it.

A marked cell must run exactly as it would without the magic (output, display, the value of its
last line, tracebacks with the user's frames only). So `%%step`, `%%prelude` and `%%params` cells
are not run through a cell magic: an input transformer replaces the magic line with one call that
registers the cell, and leaves the body to IPython as ordinary cell code, on the same lines.
"""

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from . import syntax
from .analysis import AnalysisError, analyze
from .registry import current_pipeline, parse_param_overrides

_state = {"cell_id": None}


def register_cell(text):
    """Called from a marked cell's first line as it runs: parse the magic line, register the cell."""
    from IPython import get_ipython

    spec = syntax.parse_cell(text)
    shell = get_ipython()
    label = f"In [{shell.execution_count}]" if shell is not None else "cell"
    current_pipeline().add(spec, cell_id=_state["cell_id"], label=label)


def mark_cells(lines):
    """Input transformer: `%%step ...` as the first line becomes a registration call; the body stays."""
    if not lines or syntax.split_magic_line(lines[0]) is None:
        return lines
    text = "".join(lines)
    return [f"__import__('kfmagic.magics').magics.register_cell({text!r})\n", *lines[1:]]


def _before_cell(info):
    """Remember the cell id the front-end sent; a cell that lost its magic leaves the pipeline."""
    cell_id = getattr(info, "cell_id", None)
    _state["cell_id"] = cell_id
    if cell_id and syntax.split_magic_line(info.raw_cell or "") is None:
        current_pipeline().forget_cell(cell_id)


def explain_missing(name):
    """Where the kernel got a name that no step provides: the unmarked cell that assigned it."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None or name not in shell.user_ns:
        return None
    history = shell.history_manager.input_hist_raw
    for number in range(len(history) - 1, 0, -1):
        raw = history[number]
        if syntax.split_magic_line(raw) is not None:
            continue
        try:
            if name in analyze(syntax.to_python(raw)).assigns:
                return (
                    f"The kernel has it from In [{number}], a cell that is not part of the pipeline: "
                    "mark that cell with %%step (or move it to the %%prelude or %%params)."
                )
        except AnalysisError:
            continue
    return "The kernel has it, but no cell of the pipeline defines it: define it in a step, the %%prelude or %%params."


def _fallback(shell, kind, line, cell):
    """A marked cell that reached the cell magic (no transformer, e.g. run_cell_magic): same effect."""
    register_cell(f"%%{kind} {line}\n{cell}")
    shell.run_cell(cell, store_history=False)


@magics_class
class KfMagics(Magics):
    @cell_magic
    def step(self, line, cell):
        _fallback(self.shell, "step", line, cell)

    @cell_magic
    def prelude(self, line, cell):
        _fallback(self.shell, "prelude", line, cell)

    @cell_magic
    def params(self, line, cell):
        _fallback(self.shell, "params", line, cell)

    def pipeline(self, line):
        pipeline = current_pipeline()
        args = syntax.parse_pipeline_line(line)
        if args.command == "init":
            pipeline.init(args.name, args.experiment)
        elif args.command == "show":
            return pipeline.show()
        elif args.command == "check":
            plan = pipeline.check()
            print(f"pipeline {plan.name}: {len(plan.steps)} steps, no problems found.")
            for warning in plan.warnings:
                print(f"warning: {warning}")
        elif args.command == "run":
            return pipeline.run(params=parse_param_overrides(args.param), workers=args.workers)
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
