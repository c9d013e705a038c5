"""What works in the kernel but not in a step's pod: found in a step's code before it is compiled.

Three things users hit on a cluster: files opened by a path relative to the notebook (not in the
pod), big values passed between steps (uploaded and downloaded on every run), and `%`/`!` lines
that need the kernel or a front-end. Each check returns warning texts that say what to do.
"""

import ast
import glob
import os

from .files import READERS, relative_literal
from .runtime import RESULT_FILE
from .workspace import RUNS_DIR, UnreadableResult, step_result

# A value this big travels through object storage on each run: worth a word at compile time.
LARGE_VALUE_BYTES = 64 * 2**20
# Magics that act on the kernel or the front-end: in a step's process they do nothing useful.
_KERNEL_MAGICS = {
    "matplotlib", "pipeline", "load_ext", "reload_ext", "unload_ext", "store", "history", "who", "whos",
    "who_ls", "reset", "reset_selective", "recall", "rerun", "macro", "edit", "load", "run", "notebook",
    "qtconsole", "connect_info", "config", "autoreload", "aimport", "gui", "pdb", "debug", "javascript",
    "js", "html", "HTML", "markdown", "latex", "svg", "capture",
}
_INSTALLERS = {"pip", "conda", "mamba"}


def _calls(code):
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _function_name(call):
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def relative_paths(code):
    """String literals a file-opening call receives that are paths relative to the working folder."""
    found = []
    for call in _calls(code):
        name = _function_name(call)
        if not name or not (name in READERS or name.startswith("read_")) or not call.args:
            continue
        path = relative_literal(call.args[0])
        if path is not None:
            found.append(path)
    return list(dict.fromkeys(found))


def shell_lines(code):
    """[(kind, name)] for the step's `%magic` (kind 'magic') and `!command` (kind 'shell') lines."""
    found = []
    for call in _calls(code):
        func = call.func
        if not (
            isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
            and getattr(func.value.func, "id", None) == "get_ipython"
        ):
            continue
        first = call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else ""
        if func.attr in ("run_line_magic", "run_cell_magic"):
            found.append(("magic", first))
        elif func.attr in ("system", "getoutput"):
            found.append(("shell", str(first).split(" ", 1)[0]))
    return found


def latest_sizes(workdir, step):
    """{var: bytes} the step saved in the newest local run with a readable result for it, or {}.

    A result that is not what the runtime writes is skipped: a damaged past run never stops a compile.
    """
    for out_dir in sorted(glob.glob(os.path.join(workdir, RUNS_DIR, "*", step)), key=_modified, reverse=True):
        try:
            result = step_result(out_dir)
        except UnreadableResult:
            continue
        if result is not None:
            return {var: info["bytes"] for var, info in result["saved"].items()}
    return {}


def _modified(out_dir):
    """When the step's result was written (0 if it has none, or it vanished meanwhile)."""
    try:
        return os.path.getmtime(os.path.join(out_dir, RESULT_FILE))
    except OSError:
        return 0


# A cluster stores the Argo workflow Kubeflow Pipelines makes of the IR (about three times its size)
# as one object: etcd refuses one over 1.5 MiB by default, Argo a workflow over 1 MiB compressed.
WORKFLOW_PER_IR_BYTE = 3
WORKFLOW_WARNING_BYTES = int(1.2 * 2**20)


def size_warnings(path):
    """A warning when the compiled pipeline at `path` comes near what a cluster accepts."""
    size = os.path.getsize(path)
    if size * WORKFLOW_PER_IR_BYTE < WORKFLOW_WARNING_BYTES:
        return []
    return [
        f"The compiled pipeline is {size / 1024:,.0f} KB. Kubeflow Pipelines makes an Argo workflow of it about "
        f"{WORKFLOW_PER_IR_BYTE} times that size, and clusters refuse objects over 1.5 MiB (\"etcdserver: request is "
        "too large\") or workflows over 1 MiB compressed (\"workflow is longer than maximum allowed size\"). "
        "Split the notebook into smaller pipelines, or move code many steps share into the %%prelude (carried "
        "once) or into a module built into --image."
    ]


def _size_text(size):
    return f"{size / 2**20:.0f} MiB" if size < 2**30 else f"{size / 2**30:.1f} GiB"


def warnings_for(plan, workdir, large=LARGE_VALUE_BYTES):
    """Every portability warning of the plan's steps, each naming the step and what to do."""
    found = []
    for step in plan.steps:
        code = "\n".join(part.code for part in step.parts)
        for path in relative_paths(code):
            found.append(
                f"Step {step.name!r} opens {path!r}, a path relative to the notebook's folder: the step's pod "
                "will not have that file. Ship it with the pipeline: put it on a volume (`--volume PVC:/data`, "
                "then open '/data/...'), build it into the step's --image, or read it from object storage "
                "(s3://, gs://)."
            )
        for kind, name in shell_lines(code):
            if kind == "magic" and name in _INSTALLERS:
                found.append(
                    f"Step {step.name!r} runs `%{name}`: on Kubeflow that installs into the pod on every run. "
                    f"Use `%%step {step.name} --packages ...` (or an image that has it) instead."
                )
            elif kind == "magic" and name in _KERNEL_MAGICS:
                found.append(
                    f"Step {step.name!r} runs `%{name}`, which acts on the notebook's kernel or front-end and "
                    "cannot do that inside a step's pod. Move it to an unmarked cell."
                )
            elif kind == "shell":
                found.append(
                    f"Step {step.name!r} runs the shell command `!{name}` inside its pod: the step's image must "
                    "have it, and files it makes stay in the pod."
                )
        for var, size in latest_sizes(workdir, step.name).items():
            who = step.needed_by.get(var)
            if who and size > large:
                found.append(
                    f"Step {step.name!r} passes {var!r} ({_size_text(size)} in the last local run) to "
                    f"{', '.join(who)}: on Kubeflow it goes through object storage on every run. Pass "
                    "something smaller (a path on a shared volume, a sample), or merge the steps."
                )
    return list(dict.fromkeys(found))
