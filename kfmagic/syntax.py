"""The cell grammar: what `%%step`, `%%prelude`, `%%params` and `%pipeline` lines mean.

One parser for the kernel and for notebook files read from disk, so both give the same
pipeline. The decorated functions below carry no behaviour: they are the reference text
(`%%step?` shows it) and the argument parsers, built with IPython's `magic_arguments`.
"""

import ast
import keyword
import re
from dataclasses import dataclass

from IPython.core.inputtransformer2 import TransformerManager
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments
from IPython.utils.process import arg_split

from .analysis import AnalysisError, analyze
from .errors import CellSyntaxError
from .step_options import check_step_options

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_CELL_MAGIC_RE = re.compile(r"^%%(step|prelude|params)(?=\s|$)(.*)$")
_TRANSFORMER = TransformerManager()


@magic_arguments()
@argument("name", help="Step name: lowercase letters, digits, '-' and '_', starting with a letter.")
@argument(
    "--after", nargs="+", action="extend", default=[], metavar="STEP",
    help="Steps that must finish before this one, whether or not data flows from them.",
)
@argument(
    "--outputs", nargs="+", action="extend", default=[], metavar="VAR",
    help="Variables to save even if no later step reads them (load them with run.load).",
)
@argument(
    "--metrics", nargs="+", action="extend", default=[], metavar="VAR",
    help="Numeric variables reported as metrics of this step (run.metrics).",
)
@argument("--image", help="Container image of this step on Kubeflow (default: the pipeline's, python:<kernel version>).")
@argument(
    "--packages", nargs="+", action="extend", default=None, metavar="REQ",
    help="Packages to pip-install in the step's container, added to (or overriding) the pinned ones found from its imports.",
)
@argument(
    "--no-install", dest="install", action="store_const", const=False, default=None,
    help="Install nothing at step start: the image already has every package the step needs.",
)
@argument("--cpu", help="CPU limit on Kubeflow: 2, 0.5 or 500m.")
@argument("--memory", help="Memory limit on Kubeflow, a Kubernetes quantity: 512Mi, 4Gi.")
@argument("--gpu", type=int, metavar="N", help="Number of GPUs on Kubeflow.")
@argument("--gpu-type", metavar="TYPE", help="GPU resource type (default nvidia.com/gpu); needs --gpu.")
@argument("--retries", type=int, metavar="N", help="Times Kubeflow retries the step when it fails.")
@argument(
    "--cache", dest="cache", action="store_const", const=True, default=None,
    help="Let Kubeflow reuse this step's outputs from an earlier run with the same inputs (its default).",
)
@argument("--no-cache", dest="cache", action="store_const", const=False, help="Always run this step on Kubeflow.")
@argument(
    "--env", nargs="+", action="extend", default=None, metavar="NAME=VALUE",
    help="Environment variables of the step's container on Kubeflow.",
)
@argument("--display-name", metavar="TEXT", help="Name of the step shown in the Kubeflow Pipelines UI.")
@argument(
    "--secret", nargs="+", action="extend", default=None, metavar="SECRET:KEY:ENV",
    help="Expose key KEY of Kubernetes secret SECRET as environment variable ENV (needs kfp-kubernetes).",
)
@argument(
    "--volume", nargs="+", action="extend", default=None, metavar="PVC:/PATH",
    help="Mount the persistent volume claim PVC at /PATH (needs kfp-kubernetes).",
)
def step(line, cell):
    """Run this cell in the kernel as usual, and register it as pipeline step NAME.

    Every cell marked with the same NAME is a part of that step, in notebook order. Re-running
    a cell replaces what it registered. The step's inputs are the names its code reads that
    earlier steps assign, the prelude defines, or the params declare.
    """


@magic_arguments()
def prelude(line, cell):
    """Run this cell in the kernel, and at the top of every step of the pipeline.

    For imports, helper functions and classes: what every step needs and nothing marshals.
    """


@magic_arguments()
def params(line, cell):
    """Run this cell in the kernel, and declare its assignments as pipeline parameters.

    Each line assigns a literal (int, float, str, bool, or lists/dicts of these) to a name;
    that literal is the parameter's default. Override at run time with `--param NAME=VALUE`.
    """


CELL_MAGICS = {"step": step, "prelude": prelude, "params": params}


def add_run_arguments(run):
    """The options of a run: `%pipeline run` and `kfmagic run` take the same."""
    run.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="Override a parameter's default (repeatable).",
    )
    run.add_argument("--workers", type=int, help="How many steps run at once (default: CPU count).")
    run.add_argument(
        "--runner", choices=("local", "kfp-local", "kfp"),
        help="local: each step a process here; kfp-local: the compiled pipeline run by kfp.local here; "
        "kfp: submitted to Kubeflow Pipelines (the default once a host is configured).",
    )
    run.add_argument("--local", dest="runner", action="store_const", const="local", help="Run here even if a host is configured.")
    run.add_argument("--wait", action="store_true", help="On Kubeflow: follow the run, live, until it ends.")
    return run


def add_connection_arguments(parser):
    """Where Kubeflow Pipelines is: `%pipeline config` and `kfmagic run|compile` take the same."""
    parser.add_argument("--host", help="The Pipelines API/UI URL, e.g. http://localhost:8080 (default: $KF_PIPELINES_ENDPOINT).")
    parser.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters).")
    parser.add_argument("--experiment", help="Experiment runs are filed under (default: init's, else 'Default').")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", help="Bearer token (default: $KF_PIPELINES_SA_TOKEN_PATH's file, if set).")
    auth.add_argument("--token-path", metavar="FILE", help="File holding a service-account token, re-read on each request.")
    auth.add_argument("--cookies", help="Cookie header of a signed-in browser session, e.g. 'authservice_session=...'.")
    return parser


def _pipeline_parser():
    parser = MagicArgumentParser(prog="pipeline", description="Build, check and run the notebook's pipeline.")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    init = commands.add_parser("init", help="Name the pipeline and set its defaults.")
    init.add_argument("name", help="Pipeline name (lowercase letters, digits, '-', '_').")
    init.add_argument("--experiment", help="Experiment the runs are filed under.")
    init.add_argument(
        "--notebook", metavar="PATH",
        help="The saved .ipynb of this notebook, for `%%pipeline check` to compare with (found by "
        "itself under Jupyter Server and VS Code).",
    )
    init.add_argument("--image", help="Default container image of the steps on Kubeflow (default python:<kernel version>).")
    commands.add_parser("show", help="Table of steps, inputs, outputs and params, and the DAG.")
    commands.add_parser("check", help="Report every problem of the pipeline without running anything.")
    add_run_arguments(commands.add_parser("run", help="Run the pipeline; returns a Run."))
    compile_ = commands.add_parser("compile", help="Write the pipeline as Kubeflow Pipelines YAML.")
    compile_.add_argument("-o", "--output", metavar="PATH", help="Where to write it (default: <pipeline name>.yaml).")
    add_connection_arguments(
        commands.add_parser("config", help="Where Kubeflow Pipelines is, and how to sign in (kept in memory only).")
    )
    status = commands.add_parser("status", help="State of the last run, or of run RUN on the cluster.")
    status.add_argument("run_id", nargs="?", metavar="RUN", help="A run id (default: the last run).")
    remove = commands.add_parser("remove", help="Unregister a step (all its cells).")
    remove.add_argument("name", help="The step to remove.")
    commands.add_parser("reset", help="Unregister every step, the prelude and the params.")
    reference = parser.format_help() + "".join(
        f"\n{sub.format_help()}" for sub in commands.choices.values()
    )
    return parser, reference


PIPELINE_PARSER, PIPELINE_HELP = _pipeline_parser()


def split_line(line):
    """A magic line's arguments, split as a shell would: quotes group words and are removed."""
    return arg_split(line, posix=True)


def parse_pipeline_line(line):
    """Parse a `%pipeline` line into an argparse namespace (UsageError on bad input)."""
    return PIPELINE_PARSER.parse_args(split_line(line))


@dataclass(frozen=True)
class CellSpec:
    """A cell marked with one of kfmagic's cell magics, split into its parts."""

    kind: str
    name: str | None
    options: dict
    source: str  # the whole cell text, magic line included
    code: str  # Python that IPython would run for the body, line numbers aligned with `source`
    params: dict | None = None  # for a params cell: name -> default


def split_magic_line(text):
    """(kind, argument line) when the cell starts with one of kfmagic's cell magics, else None.

    `%%step?` (help) is not a marked cell.
    """
    first = text.lstrip("\n").split("\n", 1)[0].rstrip()
    match = _CELL_MAGIC_RE.match(first)
    if not match or first.endswith("?"):
        return None
    return match.group(1), match.group(2).strip()


def to_python(body):
    """The Python IPython runs for `body` (its `%` and `!` lines become get_ipython() calls)."""
    return _TRANSFORMER.transform_cell(body)


def cell_text(cell):
    """A notebook cell's source as the kernel receives it: one string (a list is joined)."""
    source = cell.get("source") or ""
    return "".join(source) if isinstance(source, list) else source


def last_assigner(name, cells):
    """The key of the last of `cells` ((key, text) pairs, in notebook order) whose code assigns
    `name`: where an unmarked cell defined it. Marked cells and code that cannot be read are passed over."""
    for key, text in reversed(list(cells)):
        if not text or split_magic_line(text) is not None:
            continue
        try:
            if name in analyze(to_python(text)).assigns:
                return key
        except (AnalysisError, SyntaxError):
            continue
    return None


def parse_cell(text):
    """CellSpec for a marked cell, None for any other cell; CellSyntaxError for a bad magic line."""
    found = split_magic_line(text)
    if found is None:
        return None
    kind, line = found
    source = text.lstrip("\n")
    body = source.split("\n", 1)[1] if "\n" in source else ""
    try:
        args = vars(CELL_MAGICS[kind].parser.parse_args(split_line(line)))
    except Exception as error:  # argparse reports through UsageError; keep its words
        raise CellSyntaxError(f"%%{kind} {line}: {error}\nSee %%{kind}? for the options.") from None
    name = args.pop("name", None)
    if name is not None:
        check_name(name, f"%%{kind} {line}")
    for option in ("outputs", "metrics"):
        for var in args.get(option, ()):
            if not var.isidentifier() or keyword.iskeyword(var):
                raise CellSyntaxError(f"%%{kind} {name}: --{option} {var!r} is not a Python variable name.")
    if kind == "step":
        check_step_options(name, args)
    code = "\n" + to_python(body)
    defaults = parse_params(code, label=f"%%{kind}") if kind == "params" else None
    return CellSpec(kind, name, args, source, code, defaults)


def check_name(name, where):
    if not _NAME_RE.match(name):
        raise CellSyntaxError(
            f"{where}: {name!r} is not a valid name. Use lowercase letters, digits, '-' and '_', "
            "starting with a letter (at most 63 characters), e.g. 'train_model'."
        )


def _is_param_value(value):
    if isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_is_param_value(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_param_value(item) for key, item in value.items())
    return False


def parse_params(code, label="%%params"):
    """name -> default for a params cell; each statement must assign a literal to a name."""
    try:
        tree = ast.parse(code)
    except SyntaxError as error:
        raise CellSyntaxError(f"{label} line {error.lineno}: {error.msg}") from None
    lines = code.split("\n")
    defaults = {}
    for node in tree.body:
        text = lines[node.lineno - 1].strip()
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None or not all(
            isinstance(target, ast.Name) for target in targets
        ):
            raise CellSyntaxError(
                f"{label} line {node.lineno}: `{text}` is not a parameter. Each line must assign a "
                "literal to a name, e.g. `learning_rate = 0.1`; move other code to a step or the %%prelude."
            )
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            value = None
        if not _is_param_value(value):
            hint = ""
            if isinstance(value, tuple):
                hint = " Write the tuple as a list."
            elif isinstance(node.value, ast.Constant) and node.value.value is None:
                hint = " None has no parameter type: give a value of the type the parameter takes."
            raise CellSyntaxError(
                f"{label} line {node.lineno}: `{text}`: a parameter's default must be a literal int, "
                f"float, str, bool, or a list/dict of these, not an expression.{hint}"
            )
        for target in targets:
            defaults[target.id] = value
    return defaults
