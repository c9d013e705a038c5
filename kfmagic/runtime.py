"""What runs inside one step's process, anywhere: load inputs, run prelude and cells, save outputs.

`python -m kfmagic.runtime SPEC.json`. Self-contained (stdlib + kfmagic.serde), so it can travel
inside a KFP component; it never imports IPython unless the step's code has `%`/`!` lines.

SPEC is a JSON object: step, prelude/parts ([{code, source, label}]), params ({name: value}),
inputs ({var: path}), outputs/keep/metrics ([var]), out_dir. The step writes RESULT_FILE in
out_dir: {state, saved: {var: {type, bytes}}, skipped: {var: why}, metrics, error, random}
(random: the global random generators the step's code left in another state than it found them).
"""

import _io
import ast
import atexit
import builtins
import gc
import hashlib
import json
import linecache
import numbers
import os
import random
import sys
import threading
import traceback
import types
import weakref

try:
    from kfmagic import serde
except ImportError:  # embedded in a KFP component: serde's functions are defined alongside
    serde = sys.modules[__name__]

RESULT_FILE = "result.json"
OUTPUTS_DIR = "outputs"


class StepFailed(Exception):
    """The step cannot go on; `message` is what the user reads."""


def output_path(out_dir, var):
    return os.path.join(out_dir, OUTPUTS_DIR, f"{var}.pkl")


def _run_code(part, namespace, where, show=None):
    """Run one cell's code so that tracebacks point at the user's cell lines.

    With `show`, the value of a last expression statement goes to it, as a cell's Out would.
    """
    filename = f"{where}, {part['label']}"
    lines = part["source"].splitlines(True)
    linecache.cache[filename] = (len(part["source"]), None, lines, filename)
    tree = compile(part["code"], filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    last = None
    if show and tree.body and isinstance(tree.body[-1], ast.Expr) and not part["code"].rstrip().endswith(";"):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec", dont_inherit=True), namespace)
    if last is not None:
        value = eval(compile(last, filename, "eval", dont_inherit=True), namespace)
        if value is not None:
            show(value)


def _user_traceback(error):
    """The traceback of `error` without this module's frames: what a plain cell would show."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def _step_shell(namespace):
    """get_ipython() for steps with `%`/`!` lines: a real, history-less IPython shell on the step's namespace."""
    shell = None

    def get_ipython():
        nonlocal shell
        if shell is None:
            from IPython.core.interactiveshell import InteractiveShell
            from traitlets.config import Config

            config = Config()
            config.HistoryManager.enabled = False
            config.InteractiveShell.colors = "nocolor"
            shell = InteractiveShell.instance(config=config, user_ns=namespace)
            shell.enable_gui = lambda gui=None: None  # `%matplotlib inline`: a step has no GUI loop to start
            shell.showtraceback = _raise_instead  # IPython shows a magic's error and goes on; a step must fail
        return shell

    return get_ipython


def _raise_instead(exc_tuple=None, *_, **__):
    raise (exc_tuple or sys.exc_info())[1]


def _display(*objects, **_):
    """display() outside a kernel: print each object's text form, as IPython's terminal does."""
    for obj in objects:
        print(repr(obj))


def random_states():
    """The state of each global random generator a notebook may seed and draw from: the random
    module's, and numpy's (np.random) once numpy is imported."""
    states = {"random": random.getstate()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        states["numpy"] = numpy.random.get_state()
    return states


def moved(before, after):
    """The generators whose state differs between `before` and `after` (random_states). numpy first
    imported in between counts as moved once it has drawn: its position in the block of 624 words is
    623 when imported, 624 once seeded, and nothing is cached."""
    def comparable(state):
        return (state[0], state[1].tobytes(), *state[2:]) if isinstance(state[0], str) else state

    return [
        name for name, state in after.items()
        if (comparable(state) != comparable(before[name]) if name in before else state[2:4] not in ((623, 0), (624, 0)))
    ]


def fork_states(before, after, seeded):
    """{generator: the state a step forked from the warmed prelude starts from, or None for a fresh
    one}, from the states `before` and `after` the prelude ran. As in a fresh process that runs the
    prelude: where it left the generators it seeded (`seeded`, plan.Plan.seeded) or drew from, the
    others seeded anew, so parallel steps do not draw the same numbers."""
    touched = set(moved(before, after)) | set(seeded)
    return {name: state if name in touched else None for name, state in after.items()}


def start_random_states(states):
    """In a step forked from the warmed prelude: its generators as fork_states said (a fork shares
    its parent's; Python reseeds the random module's in every fork, losing the prelude's seed)."""
    for name, state in states.items():
        generator = random if name == "random" else sys.modules["numpy"].random
        if state is None:
            generator.seed()
        else:
            (generator.setstate if name == "random" else generator.set_state)(state)


def _describe_type(value):
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__


def _save(spec, namespace, result, prelude):
    """Save the outputs (each required) and what the step keeps (if it pickles)."""
    step, out_dir = spec["step"], spec["out_dir"]
    _private_dir(os.path.join(out_dir, OUTPUTS_DIR))
    for var in spec["outputs"]:
        if var not in namespace:
            who = spec.get("needed_by", {}).get(var)
            why = f"step(s) {', '.join(who)} read it" if who else "it is declared with --outputs/--metrics"
            raise StepFailed(
                f"Step {step!r} did not assign {var!r}, but {why}. Make sure every path through the "
                "step's code assigns it."
            )
    for var in dict.fromkeys([*spec["outputs"], *spec["keep"]]):
        if var not in namespace:
            continue
        kind = _describe_type(namespace[var])
        try:
            size = serde.dump(namespace[var], output_path(out_dir, var), by_name=prelude)
        except serde.LiveResource as error:
            what = f"it is {error.kind}" if error.type_name.endswith(kind) else f"it holds {error.kind} ({error.type_name})"
            if var not in spec["outputs"]:
                result["skipped"][var] = what
                continue
            raise StepFailed(
                f"Step {step!r} cannot pass on {var!r} (of type {kind}): {what}, a live resource of the step's own "
                "process that a copy in another step would not be. Pass what it stands for instead (a path, "
                "a URL, settings, the data read from it; for a generator, a list of what it yields) and open "
                "or create it again in the step that uses it."
            ) from None
        except serde.SerializationError as error:
            if var not in spec["outputs"]:
                result["skipped"][var] = f"{kind} cannot be pickled ({error})"
                continue
            raise StepFailed(
                f"Step {step!r} cannot save {var!r} (of type {kind}): neither cloudpickle nor dill can serialize "
                f"it ({error}). Recreate it in the step that uses it, or pass something that pickles "
                "instead (a path, a config, the data it holds)."
            ) from None
        except OSError as error:
            raise StepFailed(
                f"Step {step!r} could not save {var!r} (of type {kind}) in {out_dir}: {error.strerror or error}. "
                "Free space there (or move the notebook's .kfmagic/ to a larger disk) and run again; "
                "outputs of steps that finished are kept."
            ) from None
        result["saved"][var] = {"type": kind, "bytes": size}
        if var in spec.get("needed_by", {}):  # what the steps reading it are cached by
            result["saved"][var]["digest"] = file_digest(output_path(out_dir, var))


def file_digest(path):
    """`sha256:<hex>` of a value file's bytes: what a value is, for the cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _private_dir(path):
    """Make `path` (and its parents) readable by their owner only: values may be private data."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def write_private(path, text):
    """`text` in `path`, whole (written aside, then renamed) and readable by its owner only."""
    with os.fdopen(os.open(f"{path}.partial", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(text)
    os.replace(f"{path}.partial", path)


def _write_result(out_dir, result):
    """RESULT_FILE in `out_dir`; False (with one line on stderr) if it cannot be written."""
    try:
        _private_dir(out_dir)
        write_private(os.path.join(out_dir, RESULT_FILE), json.dumps(result))
    except OSError as error:
        print(f"Step {os.path.basename(out_dir)!r} could not write its result in {out_dir}: "
              f"{error.strerror or error}.", file=sys.stderr)
        return False
    return True


def _load_inputs(spec, namespace):
    """Each input into the namespace; functions and classes among them run against it."""
    for var, path in spec["inputs"].items():
        producer = spec.get("producers", {}).get(var)
        source = f"{var!r} (saved by step {producer!r})" if producer else repr(var)
        try:
            namespace[var] = serde.load(path, namespace)
        except serde.DamagedValue as error:
            raise StepFailed(
                f"Step {spec['step']!r} cannot load its input {source}: {error} ({path}). "
                "Run the pipeline again to remake it."
            ) from None
        except Exception as error:
            raise StepFailed(
                f"Step {spec['step']!r} cannot load its input {source}: {type(error).__name__}: {error}. "
                "Its producer saved it with a library this step's environment lacks, or a different version."
            ) from None


def _defined_by_prelude(namespace):
    """The classes and functions the prelude defined: every step has them, so values refer to them
    by name (an instance of a prelude class is an instance of the consumer's class, as in the kernel)."""
    return {
        name: value
        for name, value in namespace.items()
        if isinstance(value, (type, types.FunctionType)) and getattr(value, "__module__", None) == "__main__"
    }


def _metrics(spec, namespace):
    metrics = {}
    for var in spec["metrics"]:
        value = namespace[var]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise StepFailed(
                f"Step {spec['step']!r}: metric {var!r} must be a number, got a {_describe_type(value)} "
                f"({value!r:.80}). Report one number per metric."
            )
        metrics[var] = float(value)
    return metrics


def new_namespace(display=None):
    """A fresh `__main__` for a step's cells (their namespace is __main__, as in the kernel), with
    the names the runtime gives them."""
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    namespace = main.__dict__
    namespace.update(__builtins__=builtins, get_ipython=_step_shell(namespace), display=display or _display)
    return namespace


def run_prelude(namespace, params, prelude):
    """What every step starts from: the parameters, then the prelude run over them."""
    namespace.update(params)
    for part in prelude:
        _run_code(part, namespace, "prelude")


def run_step(spec, display=None, namespace=None, warm=False):
    """Run the step `spec` describes; write its result; return the process exit code.

    `display` receives what the cells display (display() calls and each cell's last value);
    without it, display() prints text as a terminal would and last values are not shown.
    `namespace`: the step's `__main__` dict (default: a new one); `warm`: the prelude has already
    run in it (a step forked from the supervisor), so the step's parameters only fill what it lacks,
    as they would have been there before the prelude.
    """
    result = {"state": "RUNNING", "saved": {}, "skipped": {}, "metrics": {}, "error": None, "random": []}
    kernel_main = sys.modules.get("__main__")
    namespace = new_namespace(display) if namespace is None else namespace
    try:
        if warm:
            for name, value in spec["params"].items():
                namespace.setdefault(name, value)
        else:
            run_prelude(namespace, spec["params"], spec["prelude"])
        prelude = _defined_by_prelude(namespace)
        _load_inputs(spec, namespace)
        found = random_states()
        for part in spec["parts"]:
            _run_code(part, namespace, f"step {spec['step']}", show=display)
        result["random"] = moved(found, random_states())
        result["metrics"] = _metrics(spec, namespace)
        _save(spec, namespace, result, prelude)
        result["state"] = "SUCCEEDED"
    except StepFailed as error:
        result.update(state="FAILED", error=str(error))
        print(str(error), file=sys.stderr)
    except BaseException as error:  # the user's code failed: show it as a plain cell would
        result.update(state="FAILED", error=_user_traceback(error))
        print(result["error"], file=sys.stderr, end="")
    finally:
        sys.modules["__main__"] = kernel_main
    written = _write_result(spec["out_dir"], result)
    return 0 if written and result["state"] == "SUCCEEDED" else 1


def forget_exit_handlers():
    """In a step forked from the warmed prelude: the exit handlers registered so far, and the
    finalizers (weakref.finalize: a temporary folder's removal) due at exit, are the prelude's, which
    its supervisor runs once when it exits; the step runs only those it registers itself."""
    atexit._clear()
    for pending in list(getattr(weakref.finalize, "_registry", ())):
        pending.atexit = False
    weakref.finalize._registered_with_atexit = False  # so that the step's own are run at exit


def open_files():
    """Every file object open now, as the collector sees them (in a warm step: not the prelude's,
    frozen, which its supervisor listed when it ran the prelude)."""
    kinds = _subclasses(_io._IOBase)  # by type: half the time isinstance takes among 200,000 objects
    return [obj for obj in gc.get_objects() if type(obj) in kinds and not _closed(obj)]


def _subclasses(kind):
    found = {kind}
    for subclass in type.__subclasses__(kind):
        found |= _subclasses(subclass)
    return found


def _closed(file):
    try:
        return file.closed
    except Exception:  # noqa: BLE001 - a detached or broken file object: nothing to flush
        return True


def flush(files):
    """Flush each of `files` still open, whatever fails."""
    for file in files:
        try:
            if not file.closed:
                file.flush()
        except Exception:  # noqa: BLE001 - a file that cannot be flushed loses what it held, as at exit
            pass


def leave(code, namespace, done=None, files=()):
    """End a step's process without the interpreter's teardown (a sixth of a trivial step's time),
    doing what teardown does that a user can see, in its order: the threads the step started that are
    not daemons are waited for (an executor's idle workers told to go first); every open file is
    flushed (`files`: the prelude's too, in a warm step), before the exit handlers run and again after
    them, since the collector closes what only a cycle holds in no set order, a file's text layer
    possibly after the file under it (and a handler may collect: IPython's does), and a file still
    referenced is never closed; then what the cells made is released, cycles included
    (files closed, temporary folders removed; in a warm step the prelude's objects stay, held by the
    supervisor); output flushed. `done()` is told just before the process ends, when nothing of the
    step is left to run."""
    wait_for_threads = getattr(threading, "_shutdown", None)  # a thread still working finishes first
    if wait_for_threads is not None:
        wait_for_threads()
    files = [*open_files(), *files]  # looked up once: the collector's list is long in a fresh process
    flush(files)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None:
        run_exit_handlers()
    flush(files)
    namespace.clear()
    gc.collect()  # what only a cycle holds (an object referring to itself, holding a file) is released too
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # nobody reads it any more
    if done is not None:
        done()
    os._exit(code)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as file:
        spec = json.load(file)
    sys.stdout.flush()
    namespace = new_namespace()
    leave(run_step(spec, namespace=namespace), namespace)


if __name__ == "__main__":
    main()
