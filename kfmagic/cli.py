"""`kfmagic show|check|run|compile|convert NOTEBOOK.ipynb`: the saved file is the pipeline.

The pipeline is built from the file (`kfmagic.notebook`) without a kernel and without running a
cell, then handed to the same Pipeline methods the magics call. Exit status 0 on success, 1 with
the message on stderr when kfmagic reports a problem, 2 for a malformed command line.
"""

import argparse
import os
import sys

import nbformat

from . import display, kale, notebook, syntax
from .errors import CellSyntaxError, KfmagicError, PlanError
from .registry import parse_param_overrides, warn

KALE_TERMS = (
    "(This notebook is read from its Kale tags: `--after S` is the tag prev:S, a step is the tag step:NAME, "
    "the %%prelude the imports/functions cells, %%params the pipeline-parameters cell.)"
)
CONFIG_OPTIONS = ("host", "namespace", "experiment", "token", "token_path", "cookies")


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
    pipeline.run(
        params=parse_param_overrides(args.param), workers=args.workers, runner=args.runner,
        wait=args.wait, progress=display.TextProgress(),
    )


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
    nbformat.write(converted, output)
    print(f"wrote {output}")


def _configure(pipeline, args):
    """--host & co. go to Pipeline.configure, as `%pipeline config` does."""
    given = {name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name, None) is not None}
    if given:
        pipeline.configure(**given)


def _parser():
    parser = argparse.ArgumentParser(
        prog="kfmagic",
        description="Build, check, run and compile the pipeline a saved notebook declares (kfmagic "
        "magics or Kubeflow Kale tags), without a kernel and without running its cells.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("notebook", metavar="NOTEBOOK.ipynb", help="The saved notebook.")
        sub.set_defaults(handler=handler)
        return sub

    command("show", show, "Print the steps, their inputs, outputs and params, and the DAG.")
    command("check", check, "Report every problem of the pipeline without running anything.")
    run_parser = syntax.add_run_arguments(
        command("run", run, "Run the pipeline (in the notebook's directory, as the kernel does).")
    )
    compile_parser = command("compile", compile_, "Compile the pipeline to Kubeflow Pipelines IR YAML.")
    compile_parser.add_argument("-o", "--output", metavar="PATH", help="Where to write it (default: PIPELINE_NAME.yaml here).")
    for sub in (run_parser, compile_parser):
        syntax.add_connection_arguments(
            sub.add_argument_group("Kubeflow Pipelines connection (as `%pipeline config`)")
        )
    convert_parser = command(
        "convert", convert, "Rewrite a Kubeflow Kale-tagged notebook with kfmagic magics (the same pipeline)."
    )
    convert_parser.add_argument("-o", "--output", metavar="OUT.ipynb", help="Default: NOTEBOOK_kfmagic.ipynb.")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except KfmagicError as error:
        print(f"kfmagic {args.command}: {error}", file=sys.stderr)
        if isinstance(error, (PlanError, CellSyntaxError)) and getattr(args, "kale_tags", False):
            print(KALE_TERMS, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kfmagic {args.command}: interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
