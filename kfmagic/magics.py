"""The IPython face of kfmagic: thin magics over the registry, and the hooks that feed it.

A marked cell must run exactly as it would without the magic (output, display, the value of its
last line, tracebacks with the user's frames only). So `%%step`, `%%prelude` and `%%params` cells
are not run as a cell magic's argument: an input transformer turns the magic line into a call of
the magic with no body, and leaves the body to IPython as ordinary cell code, on the same lines.
The cell is registered just before IPython compiles it (pre_run_cell), so a re-run cell whose code
does not parse replaces its earlier version too, and `check`/`run` then name it; a bad magic line
is reported by the magic call and registers nothing.
"""

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

import os

from . import display, drift, notebook, syntax
from .errors import KfmagicError, RunFailed, SweepInterrupted
from .registry import current_pipeline, run_options, sweep_options

def mark_cells(lines):
    """Input transformer: a first line `%%step ARGS` becomes `run_cell_magic('step', ARGS, None)`."""
    found = syntax.split_magic_line(lines[0]) if lines else None
    if found is None:
        return lines
    kind, line = found
    return [f"get_ipython().run_cell_magic({kind!r}, {line!r}, None)\n", *lines[1:]]


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
    """Print where the kernel's registry and the saved notebook at `path` disagree; whether they do."""
    if path is None:
        return False
    try:
        saved, _ = notebook.load(path)
    except KfmagicError as error:
        print(f"drift check skipped: {error}")
        return False
    found = drift.compare(pipeline.cells, saved.cells)
    if not found:
        print(f"The saved notebook {os.path.basename(path)} declares what the kernel registered.")
        return False
    print(f"The saved notebook {os.path.basename(path)} differs from what the kernel registered:")
    for line in found:
        print(f"  - {line}")
    return True


@magics_class
class KfMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.running = None  # {"cell_id", "text", "label", "registered"} of the cell being run

    def before_cell(self, info):
        """pre_run_cell: register a marked cell before IPython compiles it; a cell that lost its
        magic leaves the pipeline."""
        cell_id, text = getattr(info, "cell_id", None), info.raw_cell or ""
        label = f"In [{len(self.shell.history_manager.input_hist_raw)}]"  # stored in the history next
        self.running = {"cell_id": cell_id, "text": text, "label": label, "registered": False}
        if syntax.split_magic_line(text) is None:
            if cell_id and self._runs(text):
                current_pipeline().forget_cell(cell_id)
            return
        try:
            spec = syntax.parse_cell(text)
        except KfmagicError:
            return  # the magic call, the cell's first line, reports it; the registry stays as it was
        self._add(spec)
        self.running["registered"] = True

    def _runs(self, text):
        """Whether IPython will run the cell: not when it starts with an unknown cell magic (a typo
        of %%step is not a cell that lost its magic)."""
        first = text.lstrip().split("\n", 1)[0]
        if not first.startswith("%%"):
            return True
        name = first[2:].split(maxsplit=1)[0] if first[2:].split() else ""
        return self.shell.find_cell_magic(name) is not None

    def _add(self, spec):
        cell_id, label = self.running["cell_id"], self.running["label"]
        replaced = current_pipeline().add(spec, cell_id=cell_id, label=label)
        if replaced is not None and not cell_id and replaced.label != label:
            what = f"step {spec.name!r}" if spec.name else f"%%{spec.kind}"
            print(
                f"note: {label} has the same text as {replaced.label} ({what}) and is registered in its place: "
                "this front-end sends no cell ids, so kfmagic knows a cell by its text. Two cells of the same "
                "text in one notebook count as one here; make them differ (a comment will do)."
            )

    def _register(self, kind, line, cell):
        """The magic call. `cell` is None when the transformer left the body to IPython: the cell
        being run was registered by before_cell, or its magic line is bad (raise that here).
        Otherwise (a direct run_cell_magic call) register `cell` and run it too."""
        running = self.running if cell is None else None
        if running is not None and syntax.split_magic_line(running["text"]) == (kind, line.strip()):
            if not running.get("registered"):
                syntax.parse_cell(running["text"])  # raises what made before_cell pass over it
            return
        label = f"In [{len(self.shell.history_manager.input_hist_raw) - 1}]"
        self.running = {"cell_id": None, "text": f"%%{kind} {line}\n{cell or ''}", "label": label}
        self._add(syntax.parse_cell(self.running["text"]))
        if cell is not None:
            self.shell.run_cell(cell, store_history=False)

    @cell_magic
    def step(self, line, cell):
        self._register("step", line, cell)

    @cell_magic
    def prelude(self, line, cell):
        self._register("prelude", line, cell)

    @cell_magic
    def params(self, line, cell):
        self._register("params", line, cell)

    def pipeline(self, line):
        pipeline = current_pipeline()
        if syntax.asks_for_help(line):
            print(syntax.PIPELINE_SUMMARY)
            return None
        args = syntax.parse_pipeline_line(line)
        if args.command == "init":
            pipeline.init(args.name, args.experiment, notebook=args.notebook, image=args.image)
        elif args.command == "show":
            return pipeline.show()
        elif args.command == "check":
            drifted = report_drift(pipeline, notebook_path(self.shell))
            print(display.check_text(pipeline.check(), drift=drifted))
        elif args.command == "run":
            try:
                return pipeline.run(**run_options(args))
            except RunFailed as failure:
                raise RunFailed(f"{failure}\nThe run is kfmagic.pipeline().last_run.", failure.run) from None
        elif args.command == "sweep":
            try:
                return pipeline.sweep(**sweep_options(args))
            except SweepInterrupted as stopped:
                message = f"{stopped}\nThe sweep so far is kfmagic.pipeline().last_sweep."
                raise SweepInterrupted(message, stopped.runs, stopped.sweep) from None
        elif args.command == "compile":
            print(f"wrote {pipeline.compile(args.output)}")
        elif args.command == "config":
            connection = pipeline.configure(
                args.host, args.namespace, args.experiment, args.token, args.token_path, args.cookies, args.store
            )
            print(f"%pipeline run submits to {connection.describe()}.")
        elif args.command == "cancel":
            return pipeline.cancel(args.run_id)
        elif args.command == "logs":
            print(pipeline.logs(args.step, args.run_id), end="")
        elif args.command == "status":
            return pipeline.status(args.run_id)
        elif args.command == "runs":
            return pipeline.runs()
        elif args.command == "compare":
            return pipeline.compare(*args.run_ids)
        elif args.command == "prune":
            print(repr(pipeline.prune(args.keep, args.dry_run)))
        elif args.command == "pull":
            pulled = pipeline.pull(args.step, args.run_id)
            self.shell.user_ns.update(pulled.values)
            print(repr(pulled))
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
    unload(shell)  # a second %load_ext or %reload_ext: one set of hooks
    magics = KfMagics(shell)
    shell.register_magics(magics)
    shell.input_transformer_manager.line_transforms.insert(0, mark_cells)
    shell.events.register("pre_run_cell", magics.before_cell)
    current_pipeline().explain_missing = explain_missing


def unload(shell):
    transforms = shell.input_transformer_manager.line_transforms
    if mark_cells in transforms:
        transforms.remove(mark_cells)
    magics = shell.magics_manager.registry.get(KfMagics.__name__)
    if magics is not None and magics.before_cell in shell.events.callbacks["pre_run_cell"]:
        shell.events.unregister("pre_run_cell", magics.before_cell)
