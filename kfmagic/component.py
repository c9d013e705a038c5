"""The driver inside a compiled step's KFP component: kfmagic's runtime between KFP's artifacts.

The pipeline's runtime task hands every step this file's text and that of runtime.py and serde.py
(see compiler.py), so the step image needs no kfmagic. `main` builds the runtime from that text, runs
the step with the runtime exactly as a local run does, then hands KFP what it produced: each saved
variable as its own artifact, the metrics as a Metrics artifact, and what the cells displayed as
an HTML artifact. With a run store (store.py), it also writes there what the kernel reads: the
step's result record, its log (stdout and stderr as the process wrote them) and the values it
saved. Stdlib only (fsspec, for the store, is imported in the pod); imports nothing from kfmagic.
"""

import base64
import html
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import types

# The kfp-local backend sets this so the runtime's result lands where a local run's would.
RESULT_DIR_ENV = "KFMAGIC_RESULT_DIR"
STARTED_FILE = "started"
METRICS_OUTPUT = "kfmagic_metrics"
DISPLAY_OUTPUT = "kfmagic_output"
# A run store's files (besides runtime.py's result and outputs): each step's log, and the plan's
# steps in order with what each assigns (which step has a name's last value).
LOG_FILE = "log.txt"
STEPS_FILE = "steps.json"
# A step of a sweep's loop takes its combination (its record folder and the swept values) as this argument.
COMBINATION_ARG = "kfmagic_combination"
_MISSING = object()


def load_runtime(sources):
    """runtime.py with serde.py's functions alongside, as one module built from their text.

    kfmagic is hidden while runtime's text runs, so it takes the embedded serde even in an image
    that happens to have some other kfmagic installed: what was compiled is what runs.
    """
    module = types.ModuleType("kfmagic_runtime")
    module.__file__ = "kfmagic/runtime.py"
    sys.modules[module.__name__] = module
    installed = sys.modules.get("kfmagic", _MISSING)
    sys.modules["kfmagic"] = None
    try:
        exec(compile(sources["serde.py"], "kfmagic/serde.py", "exec"), module.__dict__)
        exec(compile(sources["runtime.py"], module.__file__, "exec"), module.__dict__)
    finally:
        if installed is _MISSING:
            del sys.modules["kfmagic"]
        else:
            sys.modules["kfmagic"] = installed
    return module


class CellOutput:
    """What the step's cells show, in order: printed text, display() calls, last values, figures."""

    def __init__(self):
        self.items = []  # (kind, content): "text" | "html" | "markdown" | "png" | "svg"

    def write(self, text):
        if self.items and self.items[-1][0] == "text":
            self.items[-1] = ("text", self.items[-1][1] + text)
        else:
            self.items.append(("text", text))

    def display(self, *objects, **_):
        for obj in objects:
            self.items.append(_rich(obj))

    def add_open_figures(self):
        """Figures matplotlib still holds at the end of the step (what `plt.show()` would draw)."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for number in pyplot.get_fignums():
            buffer = io.BytesIO()
            pyplot.figure(number).savefig(buffer, format="png", bbox_inches="tight")
            self.items.append(("png", base64.b64encode(buffer.getvalue()).decode()))

    def html(self, step):
        parts = [f"<h3>step {html.escape(step)}</h3>"]
        for kind, content in self.items:
            if kind == "text":
                parts.append(f"<pre>{html.escape(content)}</pre>")
            elif kind == "html" or kind == "svg":
                parts.append(f"<div>{content}</div>")
            elif kind == "markdown":
                parts.append(f"<pre>{html.escape(content)}</pre>")
            elif kind == "png":
                parts.append(f"<img src='data:image/png;base64,{content}'/>")
        if not self.items:
            parts.append("<p>(the step displayed nothing)</p>")
        return "<html><body>" + "\n".join(parts) + "</body></html>"


def _rich(obj):
    """The richest form of `obj` a browser shows, as IPython's formatters would pick it."""
    figure = type(obj).__module__.startswith("matplotlib") and hasattr(obj, "savefig")
    if figure:
        buffer = io.BytesIO()
        obj.savefig(buffer, format="png", bbox_inches="tight")
        return "png", base64.b64encode(buffer.getvalue()).decode()
    for method, kind in (("_repr_html_", "html"), ("_repr_svg_", "svg"), ("_repr_png_", "png"),
                         ("_repr_markdown_", "markdown")):
        render = getattr(obj, method, None)
        if callable(render):
            try:
                content = render()
            except Exception:  # a broken repr must not fail the step
                continue
            if content is None:
                continue
            if kind == "png":
                content = base64.b64encode(content).decode() if isinstance(content, bytes) else content
            return kind, content
    try:
        return "text", repr(obj) + "\n"
    except Exception as error:  # as in the kernel: the error is shown, the value is not, the cell goes on
        print(f"{type(error).__name__} in the repr of a {type(obj).__qualname__}: {error}", file=sys.stderr)
        return "text", ""


class _Tee:
    """stdout that still streams to the pod's log and also feeds CellOutput."""

    def __init__(self, stream, sink):
        self.stream, self.sink = stream, sink

    def write(self, text):
        self.sink.write(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _result_dir(step):
    """Where the step's result.json goes beside a local run's (kfp-local, 0700), else None (a pod)."""
    root = os.environ.get(RESULT_DIR_ENV)
    if not root:
        return None
    result_dir = os.path.join(root, step)
    os.makedirs(result_dir, mode=0o700, exist_ok=True)
    return result_dir


def main(args, step, shared, store=""):
    """Run one step inside its KFP component. `args` are the component's arguments by name;
    `shared` is what the runtime task hands every step (runtime sources, prelude, the plan's steps);
    `store` the run store it was given, as JSON text ("" for none).

    The runtime works in a scratch folder (in the run's folder on kfp-local, so its values move to
    the artifacts without a copy), removed whatever happens: a step leaves nothing in the temp dir.
    """
    runtime = load_runtime(shared["sources"])
    step = dict(step, prelude=shared["prelude"])
    combination = json.loads(args[COMBINATION_ARG]) if step.get("combination") else None
    record = step["step"] if combination is None else f"{combination['folder']}/{step['step']}"  # where its records go
    result_dir = _result_dir(record)
    out_dir = tempfile.mkdtemp(prefix="kfmagic-scratch-", dir=result_dir)
    log_path, result = os.path.join(result_dir or out_dir, LOG_FILE), None
    try:
        with _Log(log_path):
            result = _run(args, step, runtime, result_dir, out_dir, combination)
    finally:
        try:
            if store:
                write_store(json.loads(store), record, shared.get("steps", []), result, log_path)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    if result["state"] != "SUCCEEDED":
        raise SystemExit(1)  # the runtime or _hand_over has printed why; KFP marks the task failed


def _run(args, step, runtime, result_dir, out_dir, combination=None):
    """The step run by the runtime in `out_dir`, then what it made handed to KFP (and to
    `result_dir`); returns its result. A sweep's `combination` gives the values of its swept parameters."""
    started = time.time()
    if result_dir:
        runtime.write_private(os.path.join(result_dir, STARTED_FILE), str(started))
    spec = dict(
        step,
        params={
            name: json.loads(args[argument]) if name in step["json_params"] else args[argument]
            for name, argument in step["params"].items()
        } | (combination["params"] if combination else {}),
        inputs={var: args[argument].path for var, argument in step["inputs"].items()},
        out_dir=out_dir,
    )
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures render to images, no window
    shown = CellOutput()
    stdout, sys.stdout = sys.stdout, _Tee(sys.stdout, shown)
    try:
        runtime.run_step(spec, display=shown.display)
        shown.add_open_figures()
    finally:
        sys.stdout = stdout
    with open(os.path.join(out_dir, runtime.RESULT_FILE)) as file:
        result = json.load(file)
    _hand_over(args, step, runtime, out_dir, result)
    for name, value in result["metrics"].items():
        args[METRICS_OUTPUT].log_metric(name, value)
    os.makedirs(os.path.dirname(args[DISPLAY_OUTPUT].path) or ".", exist_ok=True)
    runtime.write_private(args[DISPLAY_OUTPUT].path, shown.html(step["step"]))
    result.update(started=started, finished=time.time())
    if result_dir:
        # whole, so a watcher never reads a result without artifact paths
        runtime.write_private(os.path.join(result_dir, runtime.RESULT_FILE), json.dumps(result))
    return result


class _Log:
    """The step's stdout and stderr as its process writes them (its `!commands` and C libraries
    too: the file descriptors are copied), kept in `path` while they still reach the pod's log."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        _flush()
        self.file = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb", buffering=0)
        self.lock, self.originals, self.copiers = threading.Lock(), {}, []
        for fd in (1, 2):
            read, write = os.pipe()
            self.originals[fd] = os.dup(fd)
            os.dup2(write, fd)
            os.close(write)
            copier = threading.Thread(target=self._copy, args=(read, self.originals[fd]), daemon=True)
            copier.start()
            self.copiers.append(copier)
        return self

    def _copy(self, read, original):
        """Everything from `read` on to `original` at once, and into the log a whole line at a time (so
        stdout's and stderr's lines never cut into each other there)."""
        partial = b""
        try:
            while chunk := os.read(read, 1 << 16):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(original, view):]
                lines, newline, partial = (partial + chunk).rpartition(b"\n")
                if newline:
                    with self.lock:
                        self.file.write(lines + newline)
        except OSError:
            pass  # the pod's own output went away: the log keeps what came
        finally:
            if partial:
                with self.lock:
                    self.file.write(partial)
            os.close(read)

    def __exit__(self, *exc):
        _flush()
        for fd, original in self.originals.items():
            os.dup2(original, fd)  # the pipe's end closes: its copier reads to the end and stops
        for copier in self.copiers:
            copier.join(timeout=5)  # unless something the step started still holds it
        for original in self.originals.values():
            os.close(original)
        self.file.close()
        return False


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def write_store(store, step, steps, result, log_path):
    """What the kernel reads of this step into the run's store (`{"location", "run_id"}`): its values,
    its log, the plan's steps, and last its result (so a result there means the rest is too).

    A store that cannot be written leaves the step as it ran: one line on stderr (the pod's log) says why.
    """
    where = f"{store['location']}/{store['run_id']}"
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(where)
        folder = f"{root}/{step}"
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            fs.makedirs(f"{folder}/outputs", exist_ok=True)  # object stores have no folders to make
        saved = result["saved"] if result else {}
        for var, info in saved.items():
            fs.put_file(info["path"], f"{folder}/outputs/{var}.pkl")
        if os.path.exists(log_path):
            fs.put_file(log_path, f"{folder}/{LOG_FILE}")
        fs.pipe_file(f"{root}/{STEPS_FILE}", json.dumps(steps).encode())
        if result:
            record = dict(result, saved={var: {k: v for k, v in info.items() if k != "path"} for var, info in saved.items()})
            fs.pipe_file(f"{folder}/result.json", json.dumps(record).encode())
    except Exception as error:  # whatever the storage library raises: the step's outcome stands
        said = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        print(
            f"kfmagic: step {step!r} could not write its records to the run store {where}: {type(error).__name__}"
            f"{': ' + said if said else ''}. The step's outcome stands, but the notebook cannot read its values, "
            "metrics or log.", file=sys.stderr,
        )


def _hand_over(args, step, runtime, out_dir, result):
    """Each saved value becomes its artifact (the result records where); one that cannot (a full
    disk) fails the step with one message naming the variable, and is not recorded as saved."""
    for var in (*step["outputs"], *step["keep"]):
        artifact = args[var]
        try:
            os.makedirs(os.path.dirname(artifact.path) or ".", exist_ok=True)
            if var in result["saved"]:
                shutil.move(runtime.output_path(out_dir, var), artifact.path)
                artifact.metadata.update(result["saved"][var])
                result["saved"][var]["path"] = artifact.path
            else:  # a kept value that could not be pickled: KFP still expects the file
                runtime.write_private(artifact.path, "")
                artifact.metadata["skipped"] = result["skipped"].get(var, "not assigned")
        except OSError as error:
            message = (
                f"Step {step['step']!r} could not save {var!r} as its artifact ({artifact.path}): "
                f"{error.strerror or error}. Free space there and run again."
            )
            print(message, file=sys.stderr)
            result["saved"].pop(var, None)
            result.update(state="FAILED", error=message)
