"""`kfmagic show|check|run|compile|convert|runs|compare|prune NOTEBOOK.ipynb` (and `kfmagic cancel RUN`): the
saved file is the pipeline.

The pipeline is built from the file (`kfmagic.notebook`) without a kernel and without running a
cell, then handed to the same Pipeline methods the magics call. Exit status 0 on success, 1 with
the message on stderr when kfmagic reports a problem, 2 for a malformed command line. Stopped by a
signal (Ctrl-C, `timeout`, a CI cancel, a closed terminal), a run first stops every step process,
then the status is 128 + the signal's number (130 SIGINT, 143 SIGTERM, 129 SIGHUP); output closed
by its reader (`kfmagic show NB | head`) ends the command quietly with 141, as SIGPIPE ends Unix tools.
"""

import argparse
import os
import signal
import sys
import threading


from . import display, kale, notebook, syntax
from .config import TOKEN_PATH_ENV
from .errors import CellSyntaxError, KfmagicError, PlanError
from .registry import Pipeline, run_options, sweep_options, warn

KALE_TERMS = (
    "(This notebook is read from its Kale tags: `--after S` is the tag prev:S, a step is the tag step:NAME, "
    "the %%prelude the imports/functions cells, %%params the pipeline-parameters cell.)"
)
CONFIG_OPTIONS = ("host", "namespace", "experiment", "token", "token_path", "cookies", "store")
TOKEN_WARNING = (
    "--token puts the token on the command line, where every user of this machine can read it (ps, "
    f"/proc); give it in a file instead: --token-path FILE, or the file named by ${TOKEN_PATH_ENV}."
)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _load(args):
    nb = notebook.read(args.notebook)
    args.kale_tags = notebook.is_kale(nb)
    pipeline, warnings = notebook.load(args.notebook, nb)
    warn(warnings)
    return pipeline

def show(args):
    print(repr(_load(args).show()))


def check(args):
    plan = _load(args).check()
    print(display.check_text(plan))


def run(args):
    pipeline = _load(args)
    _configure(pipeline, args)
    os.chdir(os.path.dirname(pipeline.notebook_path))  # relative paths resolve as in the kernel
    pipeline.run(progress=display.TextProgress(), **run_options(args))


def sweep(args):
    pipeline = _load(args)
    _configure(pipeline, args)
    os.chdir(os.path.dirname(pipeline.notebook_path))  # relative paths resolve as in the kernel
    print(repr(pipeline.sweep(**sweep_options(args))))


def compile_(args):
    pipeline = _load(args)
    _configure(pipeline, args)
    output = os.path.abspath(args.output or f"{pipeline.name}.yaml")
    os.chdir(os.path.dirname(pipeline.notebook_path))  # relative paths are checked as the kernel would
    print(f"wrote {pipeline.compile(output)}")


def convert(args):
    nb = notebook.read(args.notebook)
    if not notebook.is_kale(nb):
        raise KfmagicError(f"{args.notebook}: no Kale tags to convert (or it already uses kfmagic's magics).")
    output = args.output or f"{os.path.splitext(args.notebook)[0]}_kfmagic.ipynb"
    if os.path.abspath(output) == os.path.abspath(args.notebook):
        raise KfmagicError(f"-o {output}: that is the input notebook; write the converted one to a new file.")
    default_name = kale.step_name(os.path.splitext(os.path.basename(args.notebook))[0])
    converted, warnings = kale.convert(nb, default_name)
    warn(warnings)
    import nbformat  # only here: its import costs more than a `check`

    nbformat.write(converted, output)
    print(f"wrote {output}")


def cancel(args):
    """Stop a run on the cluster: the notebook is not needed, only where the cluster is."""
    pipeline = Pipeline()
    _configure(pipeline, args)
    print(repr(pipeline.cancel(args.run_id)))


def runs(args):
    print(repr(_in_its_folder(args).runs()))


def compare(args):
    print(repr(_in_its_folder(args).compare(*args.run_ids)))


def prune(args):
    print(repr(_in_its_folder(args).prune(args.keep, args.dry_run)))


def _in_its_folder(args):
    """The notebook's pipeline, with the notebook's folder (where its runs are) as the working directory."""
    pipeline = _load(args)
    os.chdir(os.path.dirname(pipeline.notebook_path))
    return pipeline


def _configure(pipeline, args):
    """--host & co. go to Pipeline.configure, as `%pipeline config` does."""
    given = {name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name, None) is not None}
    if given:
        pipeline.configure(**given)


class _CommandLineError(Exception):
    def __init__(self, parser, message):
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """Leaves a malformed command line to main(), which says it without credentials."""

    def error(self, message):
        raise _CommandLineError(self, message)


class _Version(argparse.Action):
    """--version, looked up only when asked: importlib.metadata would add ~20 ms to every command."""

    def __init__(self, option_strings, dest, **_):
        super().__init__(option_strings, dest, nargs=0, help="show kfmagic's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        print(f"kfmagic {version('kfmagic')}")
        parser.exit()


def _parser():
    parser = _Parser(
        prog="kfmagic",
        description="Build, check, run and compile the pipeline a saved notebook declares (kfmagic "
        "magics or Kubeflow Kale tags), without a kernel and without running its cells.",
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("notebook", metavar="NOTEBOOK.ipynb", help="The saved notebook.")
        sub.set_defaults(handler=handler)
        return sub

    command("show", show, "Print the steps, their inputs, outputs and params, and the DAG.")
    command("check", check, "Report every problem of the pipeline without running anything.")
    run_parser = syntax.add_run_arguments(
        command("run", run, "Run the pipeline, in the notebook's directory so that relative paths mean what they mean there.")
    )
    sweep_parser = syntax.add_sweep_arguments(
        command("sweep", sweep, "Run the pipeline once per combination of parameter values (a grid, or --random N) "
                "and print the combinations ordered by a metric; steps no swept parameter reaches run once.")
    )
    compile_parser = command("compile", compile_, "Compile the pipeline to Kubeflow Pipelines IR YAML.")
    compile_parser.add_argument(
        "-o", "--output", action=syntax.Once, metavar="PATH", help="Where to write it (default: PIPELINE_NAME.yaml here)."
    )
    cancel_parser = commands.add_parser(
        "cancel", help="Stop a run on Kubeflow Pipelines.", description="Stop a run on Kubeflow Pipelines."
    )
    cancel_parser.add_argument("run_id", metavar="RUN", help="The run's id (printed when it was submitted).")
    cancel_parser.set_defaults(handler=cancel)
    for sub in (run_parser, sweep_parser, compile_parser, cancel_parser):
        group = syntax.add_connection_arguments(sub.add_argument_group("Kubeflow Pipelines connection (as `%pipeline config`)"))
        if sub is not cancel_parser:
            syntax.add_store_argument(group)
    history = syntax.add_history_commands(
        commands, lambda sub: sub.add_argument("notebook", metavar="NOTEBOOK.ipynb", help="The saved notebook.")
    )
    for sub, handler in zip(history, (runs, compare, prune)):
        sub.set_defaults(handler=handler)
    convert_parser = command(
        "convert", convert, "Rewrite a Kubeflow Kale-tagged notebook with kfmagic magics (the same pipeline)."
    )
    convert_parser.add_argument(
        "-o", "--output", action=syntax.Once, metavar="OUT.ipynb", help="Default: NOTEBOOK_kfmagic.ipynb."
    )
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except _CommandLineError as error:
        _say(f"{error.parser.format_usage()}{error.parser.prog}: error: {syntax.redact(str(error), argv)}")
        return 2
    stop, cwd = _Stop(), os.getcwd()
    try:
        with stop:
            if getattr(args, "token", None) is not None:
                warn([TOKEN_WARNING])
            args.handler(args)
            sys.stdout.flush()
    except (KeyboardInterrupt, KfmagicError) as error:
        return _report(args, error, stop.signum)
    finally:
        os.chdir(cwd)  # run and compile work in the notebook's directory
    return 0


def _report(args, error, signum):
    """Say how the command ended (one message on stderr) and return its exit status."""
    if signum == signal.SIGPIPE:  # the reader of the output went away: nothing to say, nowhere to say it
        return 128 + signum
    if signum is not None or isinstance(error, KeyboardInterrupt):
        _say(f"kfmagic {args.command}: {_stopped(error, signum or signal.SIGINT)}")
        return 128 + (signum or signal.SIGINT)
    kale_terms = isinstance(error, (PlanError, CellSyntaxError)) and getattr(args, "kale_tags", False)
    _say(f"kfmagic {args.command}: {error}" + (f"\n{KALE_TERMS}" if kale_terms else ""))
    return 1


def _say(message):
    """A message on stderr; nothing if nobody reads stderr any more (`2>&1 | head`)."""
    try:
        print(message, file=sys.stderr, flush=True)
    except BrokenPipeError:
        _to_devnull(sys.stderr)


def _to_devnull(stream):
    """Send what is still to be written to `stream` to /dev/null: its reader went away, and Python
    would otherwise complain when it flushes the stream at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _stopped(error, signum):
    said = "interrupted (Ctrl-C)" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    run = getattr(error, "run", None)
    if run is not None and run.state == "CANCELED":
        kept = f"; outputs of finished steps are kept in {run.run_dir}" if run.run_dir else ""
        return f"{said}: every step process was stopped{kept}."
    if isinstance(error, KfmagicError):
        return f"{said}: {error}"
    return f"{said}."


class _Stop:
    """While the command runs: SIGINT, SIGTERM and SIGHUP, or a closed stdout/stderr, raise Stopped
    in the main thread, once (a run stops every step process on it, as on Ctrl-C); what comes after
    is not interrupted, so that stopping finishes. `signum` says what stopped the command."""

    def __init__(self):
        self.signum = None
        self._handlers, self._streams = {}, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._handlers = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        self._streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Output(sys.stdout, self), _Output(sys.stderr, self)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        sys.stdout, sys.stderr = self._streams
        return False

    def _on_signal(self, signum, frame):
        self.stop(signum)

    def stop(self, signum):
        if self.signum is None:
            self.signum = signum
            raise Stopped(signum)


class Stopped(KeyboardInterrupt):
    """The command was told to stop (a signal, or its output closed): handled as Ctrl-C is."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _Output:
    """A standard stream whose reader went away (`| head`) stops the command, as SIGPIPE stops Unix
    tools; what is written after goes to /dev/null."""

    def __init__(self, stream, stop):
        self._stream, self._stop = stream, stop

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed()

    def _closed(self):
        _to_devnull(self._stream)
        self._stop.stop(signal.SIGPIPE)

    def __getattr__(self, name):
        return getattr(self._stream, name)


if __name__ == "__main__":
    sys.exit(main())
