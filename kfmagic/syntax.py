"""The cell grammar: what `%%step`, `%%prelude`, `%%params` and `%pipeline` lines mean.

One parser for the kernel and for notebook files read from disk, so both give the same
pipeline. The decorated functions below carry no behaviour: they are the reference text
(`%%step?` shows it) and the argument parsers, built with IPython's `magic_arguments`.

A magic line is split like a shell's, and ends at a `# comment` as Python code does. Every bad
line is one CellSyntaxError naming the magic, the option and what to write instead: a quote left
open, an unknown option, a bad value, a single-valued option given twice (`Once`). No message
shows the value of --token or --cookies (`redact`).
"""

import argparse
import ast
import keyword
import re
import shlex
import warnings
from dataclasses import dataclass

from IPython.core.error import UsageError
from IPython.core.inputtransformer2 import TransformerManager, leading_empty_lines, leading_indent
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments

from .analysis import AnalysisError, analyze
from .errors import CellSyntaxError
from .step_options import STEP_NAME, check_step_options

_CELL_MAGIC_RE = re.compile(r"^%%(step|prelude|params)(?=\s|$)(.*)$")
_TRANSFORMER = TransformerManager()
_SHELL_SPACE = " \t\r\n"  # what shlex splits words on


class Once(argparse.Action):
    """An option that takes one value (or, given `const`, none, as a flag): giving it twice in one
    line is an error naming it, instead of argparse's silent "the last one wins".

    `same` names the other options that set the same thing (`--cache`/`--no-cache`). An option
    counts as given once its value differs from its default (every default here is None or False).
    """

    def __init__(self, option_strings, dest, const=None, same=(), **kwargs):
        if const is not None:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, const=const, **kwargs)
        self.same = tuple(same)

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, self.default) is not self.default:
            if self.same:
                pair = " and ".join((self.option_strings[-1], *self.same))
                raise argparse.ArgumentError(self, f"given twice in this line ({pair} set the same thing); give one of them once.")
            raise argparse.ArgumentError(self, "given twice in this line; give it once.")
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


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
@argument("--image", action=Once, help="Container image of this step on Kubeflow (default: the pipeline's, python:<kernel version>).")
@argument(
    "--packages", nargs="+", action="extend", default=None, metavar="REQ",
    help="Packages to pip-install in the step's container, added to (or overriding) the pinned ones found from its imports.",
)
@argument(
    "--no-install", dest="install", action=Once, const=False, default=None,
    help="Install nothing at step start: the image already has every package the step needs.",
)
@argument("--cpu", action=Once, help="CPU limit on Kubeflow: 2, 0.5 or 500m.")
@argument("--memory", action=Once, help="Memory limit on Kubeflow, a Kubernetes quantity: 512Mi, 4Gi.")
@argument("--gpu", action=Once, type=int, metavar="N", help="Number of GPUs on Kubeflow.")
@argument("--gpu-type", action=Once, metavar="TYPE", help="GPU resource type (default nvidia.com/gpu); needs --gpu.")
@argument("--retries", action=Once, type=int, metavar="N", help="Times Kubeflow retries the step when it fails.")
@argument(
    "--cache", dest="cache", action=Once, const=True, default=None, same=("--no-cache",),
    help="Let Kubeflow reuse this step's outputs from an earlier run with the same inputs (its default).",
)
@argument("--no-cache", dest="cache", action=Once, const=False, same=("--cache",), help="Always run this step on Kubeflow.")
@argument(
    "--env", nargs="+", action="extend", default=None, metavar="NAME=VALUE",
    help="Environment variables of the step's container on Kubeflow.",
)
@argument("--display-name", action=Once, metavar="TEXT", help="Name of the step shown in the Kubeflow Pipelines UI.")
@argument(
    "--isolate", action=Once, const=True, default=None,
    help="In local runs, start this step in a fresh process rather than as a fork of the warm prelude.",
)
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
for _magic in CELL_MAGICS.values():  # magic_arguments writes a line magic's usage line, `%step ...`
    _magic.__doc__ = re.sub(rf"(?<!%)%{_magic.__name__}\b", f"%%{_magic.__name__}", _magic.__doc__, count=1)


def add_run_arguments(run):
    """The options of a run: `%pipeline run` and `kfmagic run` take the same."""
    run.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="Override a parameter's default (repeatable).",
    )
    _add_placement_arguments(run)
    run.add_argument("--wait", action=Once, const=True, default=False, help="On Kubeflow: follow the run, live, until it ends.")
    run.add_argument(
        "--from", dest="start_from", action=Once, metavar="STEP",
        help="Run STEP and every step after it; reuse the other steps' outputs from the last local run.",
    )
    return _add_process_arguments(run)


def add_sweep_arguments(sweep):
    """The options of a sweep: `%pipeline sweep` and `kfmagic sweep` take the same."""
    sweep.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUES",
        help="A parameter's values to try (repeatable): a list, C=0.1,1,10, or for --random a range of numbers, "
        "depth=2..8 (ints, both ends included) or lr=1e-4..1e-1:log (on a log scale). One value fixes it.",
    )
    search = sweep.add_mutually_exclusive_group()
    search.add_argument("--grid", action=Once, const=True, default=False, help="Every combination of the listed values (the default).")
    search.add_argument(
        "--random", action=Once, type=int, metavar="N", help="N distinct combinations drawn at random from the lists and ranges.",
    )
    sweep.add_argument("--seed", action=Once, type=int, help="Seed of --random: the same seed draws the same combinations.")
    sweep.add_argument(
        "--metric", action=Once, metavar="STEP.NAME",
        help="The metric that orders the combinations (needed when the pipeline reports more than one).",
    )
    sweep.add_argument(
        "--maximize", dest="maximize", action=Once, const=True, default=None, same=("--minimize",),
        help="The highest metric is the best (the default).",
    )
    sweep.add_argument(
        "--minimize", dest="maximize", action=Once, const=False, same=("--maximize",), help="The lowest metric is the best.",
    )
    _add_placement_arguments(sweep)
    return _add_process_arguments(sweep)


def _add_placement_arguments(run):
    """How many steps run at once, and where: a run and a sweep take the same."""
    run.add_argument(
        "--workers", action=Once, type=int,
        help="How many steps run at once (default: every step that is ready, up to 16, while memory lasts).",
    )
    run.add_argument(
        "--runner", action=Once, same=("--local",), choices=("local", "kfp-local", "kfp"),
        help="local: each step a process here; kfp-local: the compiled pipeline run by kfp.local here; "
        "kfp: submitted to Kubeflow Pipelines (the default once a host is configured).",
    )
    run.add_argument(
        "--local", dest="runner", action=Once, const="local", same=("--runner",), help="Run here even if a host is configured."
    )
    return run


def _add_process_arguments(run):
    """What a step reuses, and the process it starts in: a run and a sweep take the same."""
    run.add_argument(
        "--no-cache", dest="cache", action=Once, const=False, default=True,
        help="Run every step, reusing nothing from earlier runs (on Kubeflow: no cached tasks).",
    )
    run.add_argument(
        "--isolate", action=Once, const=True, default=False,
        help="Start every step in a fresh process (by default steps are forks of a process that ran the %%%%prelude once).",
    )
    return run


def add_connection_arguments(parser):
    """Where Kubeflow Pipelines is: `%pipeline config` and `kfmagic run|compile` take the same."""
    parser.add_argument("--host", action=Once, help="The Pipelines API/UI URL, e.g. http://localhost:8080 (default: $KF_PIPELINES_ENDPOINT).")
    parser.add_argument("--namespace", action=Once, help="Kubeflow profile namespace (multi-user clusters).")
    parser.add_argument("--experiment", action=Once, help="Experiment runs are filed under (default: init's, else 'Default').")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", action=Once, help="Bearer token (default: $KF_PIPELINES_SA_TOKEN_PATH's file, if set).")
    auth.add_argument("--token-path", action=Once, metavar="FILE", help="File holding a service-account token, re-read on each request.")
    auth.add_argument("--cookies", action=Once, help="Cookie header of a signed-in browser session, e.g. 'authservice_session=...'.")
    return parser


def add_store_argument(parser):
    """Where cluster runs keep their records: `%pipeline config` and `kfmagic run|compile` take it."""
    parser.add_argument(
        "--store", action=Once, metavar="URL",
        help="Run store of cluster runs, where each step writes its result, log and values for the notebook to "
        "read: s3://BUCKET/PREFIX (S3, MinIO), gs://BUCKET/PREFIX (default: $KFMAGIC_STORE). Credentials come "
        "from the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS).",
    )
    return parser


def _pipeline_parser():
    parser = MagicArgumentParser(prog="pipeline", description="Build, check and run the notebook's pipeline.")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    init = commands.add_parser("init", help="Name the pipeline and set its defaults.")
    init.add_argument("name", help="Pipeline name (lowercase letters, digits, '-', '_').")
    init.add_argument("--experiment", action=Once, help="Experiment the runs are filed under.")
    init.add_argument(
        "--notebook", action=Once, metavar="PATH",
        help="The saved .ipynb of this notebook, for `%%pipeline check` to compare with (found by "
        "itself under Jupyter Server and VS Code).",
    )
    init.add_argument("--image", action=Once, help="Default container image of the steps on Kubeflow (default python:<kernel version>).")
    commands.add_parser("show", help="Table of steps, inputs, outputs and params, and the DAG.")
    commands.add_parser("check", help="Report every problem of the pipeline without running anything.")
    add_run_arguments(commands.add_parser("run", help="Run the pipeline; returns a Run."))
    add_sweep_arguments(commands.add_parser(
        "sweep", help="Run the pipeline once per combination of parameter values; returns a Sweep."
    ))
    compile_ = commands.add_parser("compile", help="Write the pipeline as Kubeflow Pipelines YAML.")
    compile_.add_argument(
        "-o", "--output", action=Once, metavar="PATH", help="Where to write it (default: <pipeline name>.yaml)."
    )
    add_store_argument(add_connection_arguments(
        commands.add_parser("config", help="Where Kubeflow Pipelines is, how to sign in (kept in memory only), and the run store.")
    ))
    status = commands.add_parser("status", help="State of the last run, or of run RUN on the cluster.")
    status.add_argument("run_id", nargs="?", metavar="RUN", help="A run id (default: the last run).")
    cancel = commands.add_parser("cancel", help="Stop the last run, or run RUN, on Kubeflow Pipelines.")
    cancel.add_argument("run_id", nargs="?", metavar="RUN", help="A run id (default: the last run).")
    logs = commands.add_parser("logs", help="What step STEP printed (stdout and stderr) in the last run, or in run RUN.")
    logs.add_argument("step", metavar="STEP", help="The step.")
    logs.add_argument(
        "run_id", nargs="?", metavar="RUN", help="A run id: kfmagic's (a folder of .kfmagic/runs) or the cluster's (default: the last run)."
    )
    add_history_commands(commands)
    pull = commands.add_parser("pull", help="Set in the kernel what step STEP saw in the last run, or in run RUN: inputs and params.")
    pull.add_argument("step", metavar="STEP", help="The step (a failed one, to re-run its cell here).")
    pull.add_argument("run_id", nargs="?", metavar="RUN", help="A run id, or the short id `runs` shows (default: the last run).")
    remove = commands.add_parser("remove", help="Unregister a step (all its cells).")
    remove.add_argument("name", help="The step to remove.")
    commands.add_parser("reset", help="Unregister every step, the prelude and the params.")
    reference = parser.format_help() + "".join(
        f"\n{sub.format_help()}" for sub in commands.choices.values()
    )
    summary = "\n".join(
        ["%pipeline SUBCOMMAND: build, check and run the notebook's pipeline (%pipeline? for every option).", ""]
        + [f"  {action.dest:<8} {action.help}" for action in commands._choices_actions]
    )
    return parser, reference, tuple(commands.choices), summary


def add_history_commands(commands, notebook_argument=None):
    """`runs`, `compare` and `prune`: `%pipeline` and `kfmagic` take the same (`notebook_argument` adds
    the CLI's NOTEBOOK.ipynb first); returns their three parsers."""

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if notebook_argument:
            notebook_argument(sub)
        return sub

    runs = command("runs", "This notebook's runs, newest first: state, start, time, params, metrics; room on disk.")
    compare = command("compare", "Runs side by side (default: the last 5): params and metrics, plotted in a notebook.")
    compare.add_argument("run_ids", nargs="*", metavar="RUN", help="Run ids, or the short ids `runs` shows.")
    prune = command("prune", "Remove older runs of this notebook's folder, keeping the N newest (never a running one).")
    prune.add_argument("--keep", action=Once, type=int, required=True, metavar="N", help="How many of the newest runs to keep.")
    prune.add_argument("--dry-run", action=Once, const=True, default=False, help="Say what would go, remove nothing.")
    return runs, compare, prune


PIPELINE_PARSER, PIPELINE_HELP, PIPELINE_SUBCOMMANDS, PIPELINE_SUMMARY = _pipeline_parser()


def split_line(line):
    """A magic line's words, split as a shell would: quotes group words and are removed, and a `#`
    that begins a word outside quotes starts a comment, as in Python (`--env COLOR=#fff` and
    `'a # b'` are words). A quote left open is a CellSyntaxError naming the option before it,
    never the value (it may be a token)."""
    end, left_open, opened = _scan(line)
    if left_open:
        raise CellSyntaxError(_unbalanced(line, left_open, opened))
    return shlex.split(line[:end], posix=True)


def _scan(line):
    """Read `line` as shlex does: (where a comment starts, the quote left open or a dangling backslash,
    where that opened)."""
    quote, escaped, starts_word, opened = None, False, True, 0
    for index, char in enumerate(line):
        plain = not escaped and quote is None
        if escaped:
            escaped = False
        elif quote:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                escaped = True
        elif char == "#" and starts_word:
            return index, None, None
        elif char == "\\":
            escaped, opened = True, index
        elif char in "'\"":
            quote, opened = char, index
        starts_word = plain and char in _SHELL_SPACE
    return len(line), quote or ("\\" if escaped else None), opened


def _unbalanced(line, left_open, opened):
    """What is wrong with a line shlex cannot split, said without any of its values."""
    before = shlex.split(line[:opened], posix=True)
    options = [word.partition("=")[0] for word in before if word.startswith("-")]
    where = f"after {options[-1]}" if options else f"in word {len(before) + (line[opened - 1:opened] in _SHELL_SPACE)}"
    if left_open == "\\":
        return f"the line ends with a \\ {where} that escapes nothing; remove it (or write \\\\ for a backslash)."
    return (
        f"unbalanced quote: the {left_open} opened {where} is never closed; close it "
        f"(or write \\{left_open} for the character itself)."
    )


def secret_values(words):
    """The words of a command line that hold a credential: the value of --token or --cookies
    (also abbreviated or misspelt: `--tok=X`, `--cookie X`), and any stray words after it."""
    found, taking, value_next = [], False, False
    for word in words:
        option, has_value, value = word.partition("=")
        is_value, value_next = value_next or (taking and not word.startswith("-")), False
        if is_value:
            found.append(word)
        elif word.startswith("-"):
            taking = _is_secret_option(option)
            if taking and has_value:
                found.append(value)
            value_next = taking and not has_value
    return [value for value in found if value]


def _is_secret_option(option):
    """--token, --cookies, their abbreviations and misspellings (`--tokn`, `--cookie`), but not
    --token-path (its value is a file name)."""
    name = option.lstrip("-").lower()
    if len(name) > len("token") and "token-path".startswith(name):
        return False
    return name in ("t", "c") or name[:2] in ("to", "co") or "tok" in name or "cook" in name


def redact(message, words):
    """`message` with every credential among `words` (a command line) replaced by ***."""
    for secret in sorted(set(secret_values(words)), key=len, reverse=True):
        for form in {secret, repr(secret)[1:-1]}:
            message = re.sub(rf"(?<![\w]){re.escape(form)}(?![\w])", "***", message)
    return message


def asks_for_help(line):
    """Whether a `%pipeline` line is empty or asks for help: it gets the list of subcommands."""
    try:
        return split_line(line) in ([], ["-h"], ["--help"])
    except CellSyntaxError:
        return False  # parse_pipeline_line says what is wrong


def parse_pipeline_line(line):
    """A `%pipeline` line as an argparse namespace; CellSyntaxError naming the subcommand and what
    is wrong, never showing a credential."""
    first = (line.split(None, 1) or [""])[0]
    where = f"%pipeline {first}" if first in PIPELINE_SUBCOMMANDS else "%pipeline"
    try:
        words = split_line(line)
        return PIPELINE_PARSER.parse_args(words)
    except CellSyntaxError as error:
        problem = str(error)
    except UsageError as error:
        problem = f"{redact(str(error), words)}\nSee %pipeline? for the options."
    raise CellSyntaxError(f"{where}: {problem}")  # raised here: no context holds the line's words


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
    first = as_ipython_reads(text).split("\n", 1)[0].rstrip()
    match = _CELL_MAGIC_RE.match(first)
    return (match.group(1), match.group(2).strip()) if match else None


def as_ipython_reads(text):
    """The cell as IPython reads it before finding its magic: leading blank lines dropped and, when
    the first line is indented, the common indentation removed."""
    lines = leading_empty_lines(text.splitlines(keepends=True))
    if lines and lines[0][:1].isspace():
        lines = leading_indent(lines)
    return "".join(lines)


def to_python(body):
    """The Python IPython runs for `body` (its `%` and `!` lines become get_ipython() calls).

    Code IPython cannot even tokenize (a bad dedent) is returned as it is: Python's parser then
    says what is wrong, on which line, wherever the code is read.
    """
    with warnings.catch_warnings():  # IPython's note on odd line separators (\x1c, \u2028): not the user's to act on
        warnings.simplefilter("ignore")
        try:
            return _TRANSFORMER.transform_cell(body)
        except SyntaxError:
            return body


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
    source = as_ipython_reads(text)
    body = source.split("\n", 1)[1] if "\n" in source else ""
    try:
        args = vars(CELL_MAGICS[kind].parser.parse_args(split_line(line)))
    except (CellSyntaxError, UsageError) as error:
        raise CellSyntaxError(f"%%{kind} {line}".rstrip() + f": {error}\nSee %%{kind}? for the options.") from None
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
    if not STEP_NAME.match(name):
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
    except (MemoryError, RecursionError):  # what Python's parser raises for very deep nesting
        raise CellSyntaxError(
            f"{label}: the code is nested too deeply for Python's parser; a parameter's default is a plain literal."
        ) from None
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
