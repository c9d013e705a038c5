"""The bad-input table: what a user may type or save wrongly, and the one message kfmagic must give.

Each record is small data, read by tests/test_bad_input.py, which runs every kernel case in one real
kernel and every case that makes sense in a file through the `kfmagic` command.
"""

import json
from dataclasses import dataclass

from conftest import tagged_notebook

# A valid pipeline the cases are tried against (its names are not reused by the cases).
BASE = (
    "%%prelude\nimport math",
    "%%params\nrate = 0.5\nn = 3\nname = 'wine'\nflags = [1, 2]\non = True\nopts = {'a': 1}",
    "%%step load\ndata = [1, 2, 3]",
    "%%step train --after load\nmodel = sum(data) * rate",
)
SECRET = "Zq9-very-secret-token"


@dataclass(frozen=True)
class Case:
    """A bad cell. `setup` cells make the situation first (in a kernel they are undone after);
    `in_file`: the same cell in a saved notebook makes `kfmagic check` fail with the same message."""

    id: str
    cell: str
    message: str  # a fragment of the one message: what is wrong, and where
    setup: tuple = ()
    in_file: bool = True
    secret: str | None = None  # a credential that no output may show


def step(options, body="z = 1"):
    return f"%%step z {options}\n{body}"


def plan_case(id, message, *setup):
    """A plan that `%pipeline check` (and `kfmagic check`) refuses, made by `setup` cells."""
    return Case(id, "%pipeline check", message, setup=setup)


def line_case(id, line, message, secret=None):
    """A `%pipeline` line in a kernel (a file applies only `%pipeline init` lines)."""
    return Case(id, line, message, in_file=line.startswith("%pipeline init"), secret=secret)


KERNEL_CASES = [
    # %%step: names, arguments, each option with a bad value
    Case("step-name-uppercase", "%%step Train\nz = 1", "%%step Train: 'Train' is not a valid name"),
    Case("step-name-digit-first", "%%step 1st\nz = 1", "'1st' is not a valid name. Use lowercase letters"),
    Case("step-name-too-long", "%%step " + "a" * 64 + "\nz = 1", "(at most 63 characters)"),
    Case("step-no-name", "%%step\nz = 1", "%%step: the following arguments are required: name"),
    Case("step-two-names", "%%step z y\nz = 1", "%%step z y: unrecognized arguments: y"),
    Case("step-unknown-option", step("--frobnicate"), "unrecognized arguments: --frobnicate\nSee %%step? for the options."),
    Case("step-after-without-step", step("--after"), "argument --after: expected at least one argument"),
    Case("step-outputs-not-a-name", step("--outputs 1x"), "%%step z: --outputs '1x' is not a Python variable name"),
    Case("step-metrics-keyword", step("--metrics class"), "%%step z: --metrics 'class' is not a Python variable name"),
    Case("step-cpu", step("--cpu 2x"), "%%step z: --cpu 2x: write CPUs as a number (2, 0.5) or millicores (500m)"),
    Case("step-memory", step("--memory 4Gb"), "%%step z: --memory 4Gb: write memory as a Kubernetes quantity"),
    Case("step-gpu-not-int", step("--gpu two"), "argument --gpu: invalid int value: 'two'"),
    Case("step-gpu-zero", step("--gpu 0"), "%%step z: --gpu 0: ask for at least one GPU"),
    Case("step-gpu-type-alone", step("--gpu-type nvidia.com/gpu"), "--gpu-type nvidia.com/gpu: also say how many with --gpu N"),
    Case("step-retries-negative", step("--retries -1"), "%%step z: --retries -1: the number of retries is 0 or more"),
    Case("step-retries-not-int", step("--retries many"), "argument --retries: invalid int value: 'many'"),
    Case("step-env-no-value", step("--env COLOR"), "%%step z: --env COLOR: write NAME=VALUE"),
    Case("step-env-bad-name", step("--env 1A=x"), "%%step z: --env 1A=x: write NAME=VALUE"),
    Case("step-secret-two-parts", step("--secret creds:key"), "--secret creds:key: write SECRET_NAME:KEY:ENV_VAR"),
    Case("step-volume-no-path", step("--volume data"), "--volume data: write PVC_NAME:/absolute/mount/path"),
    Case("step-volume-relative", step("--volume data:mnt"), "--volume data:mnt: write PVC_NAME:/absolute/mount/path"),
    Case("step-volume-bad-claim", step("--volume Data_1:/mnt"), "--volume Data_1:/mnt: write PVC_NAME"),
    Case("step-display-name-empty", step("--display-name ''"), "--display-name '': give a non-empty name"),
    Case("step-packages-and-no-install", step("--packages numpy --no-install"), "--no-install says the image has everything"),
    Case("step-packages-without-value", step("--packages"), "argument --packages: expected at least one argument"),
    # %%step: a single-valued option given twice (list options stay repeatable)
    Case("step-image-twice", step("--image a --image b"), "argument --image: given twice in this line; give it once."),
    Case("step-cpu-twice", step("--cpu 1 --cpu 2"), "argument --cpu: given twice in this line"),
    Case("step-memory-twice", step("--memory 1Gi --memory 2Gi"), "argument --memory: given twice in this line"),
    Case("step-gpu-twice", step("--gpu 1 --gpu 2"), "argument --gpu: given twice in this line"),
    Case("step-gpu-type-twice", step("--gpu 1 --gpu-type a --gpu-type b"), "argument --gpu-type: given twice"),
    Case("step-retries-twice", step("--retries 1 --retries 2"), "argument --retries: given twice in this line"),
    Case("step-display-name-twice", step("--display-name a --display-name b"), "argument --display-name: given twice"),
    Case("step-cache-and-no-cache", step("--cache --no-cache"),
         "argument --no-cache: given twice in this line (--no-cache and --cache set the same thing); give one of them once."),
    Case("step-no-cache-twice", step("--no-cache --no-cache"), "argument --no-cache: given twice in this line"),
    Case("step-no-install-twice", step("--no-install --no-install"), "argument --no-install: given twice in this line"),
    # %%step: quoting and comments
    Case("step-open-double-quote", step('--display-name "Train it'),
         'unbalanced quote: the " opened after --display-name is never closed; close it'),
    Case("step-open-single-quote", step("--env A='x y"), "unbalanced quote: the ' opened after --env is never closed"),
    Case("step-open-quote-in-name", '%%step "z\nz = 1', 'unbalanced quote: the " opened in word 1 is never closed'),
    Case("step-dangling-backslash", step("--image a\\"), "the line ends with a \\ after --image that escapes nothing"),
    Case("step-comment-hides-the-name", "%%step # z\nz = 1", "the following arguments are required: name"),
    Case("step-comment-after-option", step("--after # load"), "argument --after: expected at least one argument"),
    Case("step-question-mark", "%%step z?\nz = 1", "%%step z?: 'z?' is not a valid name"),
    Case("step-indented-cell", "  %%step Z\n  z = 1", "%%step Z: 'Z' is not a valid name"),
    # %%prelude and %%params
    Case("prelude-with-argument", "%%prelude extra\nimport os", "%%prelude extra: unrecognized arguments: extra"),
    Case("params-with-option", "%%params --x\nq = 1", "%%params --x: unrecognized arguments: --x"),
    Case("params-call", "%%params\nq = compute()", "%%params line 2: `q = compute()`: a parameter's default must be a literal"),
    Case("params-statement", "%%params\nprint(1)", "%%params line 2: `print(1)` is not a parameter"),
    Case("params-tuple", "%%params\nq = (1, 2)", "Write the tuple as a list."),
    Case("params-none", "%%params\nq = None", "None has no parameter type"),
    Case("params-set", "%%params\nq = {1, 2}", "%%params line 2: `q = {1, 2}`: a parameter's default must be a literal"),
    Case("params-dict-int-key", "%%params\nq = {1: 2}", "%%params line 2: `q = {1: 2}`: a parameter's default"),
    Case("params-attribute-target", "%%params\nq.r = 1", "%%params line 2: `q.r = 1` is not a parameter"),
    Case("params-two-targets", "%%params\nq, r = 1, 2", "%%params line 2: `q, r = 1, 2` is not a parameter"),
    Case("params-augmented", "%%params\nq += 1", "%%params line 2: `q += 1` is not a parameter"),
    Case("params-second-line", "%%params\nq = 1\nr = q * 2", "%%params line 3: `r = q * 2`"),
    # %pipeline: every subcommand, bad arguments, repeated options, quotes, credentials
    line_case("pipeline-no-subcommand", "%pipeline --verbose", "%pipeline: the following arguments are required: SUBCOMMAND"),
    line_case("prune-no-keep", "%pipeline prune", "%pipeline prune: the following arguments are required: --keep"),
    line_case("prune-keep-negative", "%pipeline prune --keep -1", "prune --keep -1: say how many of the newest runs to keep"),
    line_case("pull-no-step", "%pipeline pull", "%pipeline pull: the following arguments are required: STEP"),
    line_case("compare-unknown-run", "%pipeline compare nosuchrun", "No run 'nosuchrun' among the runs kept in"),
    line_case("pipeline-unknown-subcommand", "%pipeline frobnicate", "%pipeline: argument SUBCOMMAND: invalid choice: 'frobnicate'"),
    line_case("init-no-name", "%pipeline init", "%pipeline init: the following arguments are required: name"),
    line_case("init-bad-name", "%pipeline init Wine", "%pipeline init: 'Wine' is not a valid name"),
    line_case("init-open-quote", '%pipeline init wine --experiment "my demos', 'unbalanced quote: the " opened after --experiment'),
    line_case("init-experiment-twice", "%pipeline init wine --experiment a --experiment b", "argument --experiment: given twice"),
    line_case("init-image-twice", "%pipeline init wine --image a --image b", "%pipeline init: argument --image: given twice"),
    line_case("init-notebook-twice", "%pipeline init wine --notebook a --notebook b", "argument --notebook: given twice"),
    line_case("init-unknown-option", "%pipeline init wine --exp-name x", "%pipeline init: unrecognized arguments: --exp-name x"),
    line_case("init-two-names", "%pipeline init wine red  # two names", "%pipeline init: unrecognized arguments: red"),
    line_case("show-argument", "%pipeline show all", "%pipeline show: unrecognized arguments: all"),
    line_case("check-option", "%pipeline check --strict", "%pipeline check: unrecognized arguments: --strict"),
    line_case("run-workers-not-int", "%pipeline run --workers many", "%pipeline run: argument --workers: invalid int value: 'many'"),
    line_case("run-workers-zero", "%pipeline run --workers 0", "--workers 0: at least one step must run at a time"),
    line_case("run-workers-twice", "%pipeline run --workers 2 --workers 3", "%pipeline run: argument --workers: given twice"),
    line_case("run-runner-and-local", "%pipeline run --runner kfp --local",
              "argument --local: given twice in this line (--local and --runner set the same thing)"),
    line_case("run-runner-unknown", "%pipeline run --runner cloud", "argument --runner: invalid choice: 'cloud'"),
    line_case("run-wait-twice", "%pipeline run --wait --wait", "%pipeline run: argument --wait: given twice"),
    line_case("run-param-unknown", "%pipeline run --param nope=1", "--param nope: no such parameter. Parameters: rate, n, name"),
    line_case("run-param-no-value", "%pipeline run --param rate", "--param 'rate': write NAME=VALUE"),
    line_case("run-param-float", "%pipeline run --param rate=high", "--param rate='high': expected a float like the default 0.5"),
    line_case("run-param-int", "%pipeline run --param n=3.5", "--param n='3.5': expected an int like the default 3"),
    line_case("run-param-bool", "%pipeline run --param on=maybe", "--param on='maybe': expected a bool like the default True"),
    line_case("run-param-list", "%pipeline run --param flags=notalist", "--param flags='notalist': expected a list"),
    line_case("run-param-dict", "%pipeline run --param opts=[1]", "--param opts='[1]': expected a dict like the default"),
    line_case("run-param-open-quote", "%pipeline run --param name='red wine", "%pipeline run: unbalanced quote: the ' opened after --param"),
    line_case("compile-output-twice", "%pipeline compile -o a.yaml -o b.yaml", "%pipeline compile: argument -o/--output: given twice"),
    line_case("compile-unknown-option", "%pipeline compile --format json", "%pipeline compile: unrecognized arguments: --format json"),
    line_case("config-token-open-quote", f'%pipeline config --host http://h --token "{SECRET}',
              'unbalanced quote: the " opened after --token is never closed', secret=SECRET),
    line_case("config-cookies-open-quote", f'%pipeline config --cookies "authservice_session={SECRET}',
              'unbalanced quote: the " opened after --cookies is never closed', secret=SECRET),
    line_case("config-token-and-cookies", f"%pipeline config --token {SECRET} --cookies {SECRET}x",
              "argument --cookies: not allowed with argument --token", secret=SECRET),
    line_case("config-token-twice", f"%pipeline config --token {SECRET} --token {SECRET}2",
              "%pipeline config: argument --token: given twice", secret=SECRET),
    line_case("config-token-with-a-space", f"%pipeline config --token {SECRET} part2",
              "%pipeline config: unrecognized arguments: ***", secret=SECRET),
    line_case("config-token-misspelt", f"%pipeline config --tokn={SECRET}", "unrecognized arguments: --tokn=***", secret=SECRET),
    line_case("config-token-abbreviated-ambiguous", f"%pipeline config --tok={SECRET}",
              "ambiguous option: --tok=*** could match --token, --token-path", secret=SECRET),
    line_case("config-token-without-subcommand", f"%pipeline --token {SECRET}", "invalid choice: '***'", secret=SECRET),
    line_case("config-token-path-missing", "%pipeline config --token-path /nonexistent/token", "--token-path /nonexistent/token: no such file"),
    line_case("config-host-twice", "%pipeline config --host http://a --host http://b", "%pipeline config: argument --host: given twice"),
    line_case("status-no-run", "%pipeline status", "%pipeline status: no run yet in this kernel"),
    line_case("status-unknown-run", "%pipeline status abc123", "%pipeline status abc123: not a run of this kernel"),
    line_case("remove-unknown-step", "%pipeline remove ghost", "%pipeline remove: no step named 'ghost'. Steps: load, train"),
    line_case("remove-no-name", "%pipeline remove", "%pipeline remove: the following arguments are required: name"),
    line_case("reset-argument", "%pipeline reset now", "%pipeline reset: unrecognized arguments: now"),
    # %pipeline sweep: each bad sweep is one message before anything runs
    line_case("sweep-no-param", "%pipeline sweep", "A sweep needs the values to try: --param NAME=V1,V2"),
    line_case("sweep-unknown-param", "%pipeline sweep --param rte=0.1,1", "--param rte: no such parameter. Did you mean 'rate'?"),
    line_case("sweep-empty-list", "%pipeline sweep --param rate=", "--param rate=: no values. List them"),
    line_case("sweep-empty-value", "%pipeline sweep --param rate=0.1,,1", "--param rate=0.1,,1: an empty value between commas"),
    line_case("sweep-value-type", "%pipeline sweep --param rate=0.1,high", "--param rate='high': expected a float like the default 0.5"),
    line_case("sweep-range-under-grid", "%pipeline sweep --param rate=0.1..1", "--param rate=0.1..1 is a range: a grid needs the values listed"),
    line_case("sweep-range-reversed", "%pipeline sweep --param rate=1..0.1 --random 3", "the range is empty or reversed"),
    line_case("sweep-range-not-numbers", "%pipeline sweep --param rate=a..b --random 3", "not a range of floats like the default 0.5"),
    line_case("sweep-int-range-fraction", "%pipeline sweep --param n=1.5..4 --random 2", "not a range of ints like the default 3"),
    line_case("sweep-log-range-zero", "%pipeline sweep --param rate=0..1:log --random 2", "a :log range needs numbers above 0"),
    line_case("sweep-range-scale", "%pipeline sweep --param rate=0.1..1:ln --random 2", "unknown scale 'ln' after the range"),
    line_case("sweep-seed-grid", "%pipeline sweep --param rate=0.1,1 --seed 3", "--seed 3: a seed is for --random N"),
    line_case("sweep-random-zero", "%pipeline sweep --param rate=0.1,1 --random 0", "--random 0: draw at least one combination"),
    line_case("sweep-grid-and-random", "%pipeline sweep --param rate=0.1,1 --grid --random 2", "argument --random: not allowed with argument --grid"),
    line_case("sweep-one-value", "%pipeline sweep --param rate=0.1", "there is nothing to sweep"),
    line_case("sweep-unread-param", "%pipeline sweep --param name=a,b", "--param name: no step reads the parameter"),
    line_case("sweep-no-metric", "%pipeline sweep --param rate=0.1,1", "no step reports one: add `--metrics NAME`"),
    line_case("sweep-unknown-metric", "%pipeline sweep --param rate=0.1,1 --metric train.acc", "--metric train.acc: no step reports that metric"),
    line_case("sweep-min-and-max", "%pipeline sweep --param rate=0.1,1 --maximize --minimize", "argument --minimize: given twice"),
    # the plan: every problem `check` reports, before anything runs
    plan_case("plan-unknown-after", "Step 'z': --after nowhere: no such step.", step("--after nowhere")),
    plan_case("plan-after-typo", "Step 'z': --after lod: no such step. Did you mean 'load'?", step("--after lod")),
    plan_case("plan-after-itself", "Step 'z': --after z names the step itself.", step("--after z")),
    plan_case("plan-cycle", "The steps form a cycle: q -> p -> q.", "%%step p --after q\np1 = 1", "%%step q --after p\nq1 = 2"),
    plan_case("plan-missing-name", "Step 'z' reads 'undefined_thing', but no step, prelude or parameter provides it.",
              step("", "z = undefined_thing + 1")),
    plan_case("plan-later-provider", "Step 'z' reads 'later_value', which only the later step 'y' assigns.",
              step("", "z = later_value"), "%%step y\nlater_value = 1"),
    plan_case("plan-outputs-never-assigned", "Step 'z': --outputs ghost: the step's code never assigns 'ghost'.",
              step("--outputs ghost")),
    plan_case("plan-metrics-never-assigned", "Step 'z': --metrics acc: the step's code never assigns 'acc'.",
              step("--metrics acc")),
    plan_case("plan-star-import-in-step", "`from os.path import *` hides which names the step defines.",
              step("", "from os.path import *")),
    plan_case("plan-prelude-reads-a-step", "reads 'data': step 'load' assigns it, but the prelude runs at the start",
              "%%prelude\nfirst = data[0]"),
]


@dataclass(frozen=True)
class FileCase:
    """A notebook file only a file can be (bad JSON, bad metadata, code too deep to parse), and the
    message `kfmagic COMMAND` gives for it."""

    id: str
    content: str  # the file's text
    message: str
    command: str = "check"


def _raw(cells, metadata=None):
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": metadata or {}, "cells": cells})


def _code(source, metadata=None):
    return {"cell_type": "code", "id": "c1", "metadata": metadata or {}, "source": source, "outputs": [], "execution_count": None}


def _kale(settings):
    nb = tagged_notebook(("x = 1", "step:a"), metadata={"kubeflow_notebook": settings})
    return json.dumps(nb)


def _deep(body, kind="step z"):
    return _raw([_code("%load_ext kfmagic"), _code(f"%%{kind}\n{body}")])


FILE_CASES = [
    FileCase("source-number", _raw([_code(5)]), "cell 1's source is a number, not text."),
    FileCase("source-object", _raw([_code({"a": 1})]), "cell 1's source is an object, not text."),
    FileCase("source-list-of-numbers", _raw([_code(["%%step a\n", 3])]), "cell 1's source is a list holding a number"),
    FileCase("source-null", _raw([_code(None)]), "cell 1's source is null, not text."),
    FileCase("cell-not-an-object", json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [5]}),
             "cell 1 is a number, not a cell"),
    FileCase("not-json", "just text", "is not a Jupyter notebook nbformat can read"),
    FileCase("empty-file", "", "is not a Jupyter notebook nbformat can read"),
    FileCase("json-list", "[1, 2]", "is not a Jupyter notebook nbformat can read"),
    FileCase("json-nested-too-deep", "[" * 100000 + "]" * 100000, "is not a Jupyter notebook nbformat can read"),
    FileCase("convert-source-number", _raw([_code(5)]), "cell 1's source is a number, not text.", command="convert"),
    FileCase("kale-settings-text", _kale("abc"), "The notebook metadata kubeflow_notebook is 'abc', not an object"),
    FileCase("kale-steps-defaults-number", _kale({"steps_defaults": 5}),
             'kubeflow_notebook.steps_defaults is 5; Kale writes it as a list of tags like ["limit:cpu:2"]'),
    FileCase("kale-steps-defaults-numbers", _kale({"steps_defaults": [5]}), "kubeflow_notebook.steps_defaults is [5]"),
    FileCase("kale-steps-defaults-bad-form", _kale({"steps_defaults": {"limits": ["cpu"]}}),
             "kubeflow_notebook.steps_defaults is {'limits': ['cpu']}"),
    FileCase("kale-pipeline-name-number", _kale({"pipeline_name": 5}), "kubeflow_notebook.pipeline_name is 5; Kale writes it as text"),
    FileCase("kale-experiment-list", _kale({"experiment": ["a"]}), "kubeflow_notebook.experiment is ['a']"),
    FileCase("kale-caching-text", _kale({"enable_caching": "no"}), "kubeflow_notebook.enable_caching is 'no'; Kale writes it as true or false"),
    FileCase("kale-volumes-object", _kale({"volumes": {"a": 1}}), "kubeflow_notebook.volumes is {'a': 1}"),
    FileCase("kale-convert-steps-defaults", _kale({"steps_defaults": 5}), "kubeflow_notebook.steps_defaults is 5",
             command="convert"),
    FileCase("kale-limit-bad-cpu", json.dumps(tagged_notebook(("x = 1", "step:a", "limit:cpu:lots"))),
             "%%step a: --cpu lots: write CPUs"),
    FileCase("kale-two-step-tags", json.dumps(tagged_notebook(("x = 1", "step:a", "step:b"))),
             "cell 1: tagged with several steps (a, b)"),
    FileCase("deep-parentheses", _deep("x = " + "(" * 5000 + "1" + ")" * 5000), "too many nested parentheses"),
    FileCase("deep-unary-minus", _deep("x = " + "-" * 100000 + "1"), "the code is nested too deeply to analyse"),
    FileCase("deep-lists", _deep("x = " + "[" * 3000 + "]" * 3000), "too many nested parentheses"),
    FileCase("deep-ifs", _deep("".join(" " * i + "if x:\n" for i in range(120)) + " " * 120 + "pass"),
             "too many levels of indentation"),
    FileCase("deep-sum", _deep("x = " + " + ".join(["1"] * 100000)), "the code is nested too deeply to analyse"),
    FileCase("deep-params", _deep("q = " + "-" * 100000 + "1", kind="params"), "nested too deeply for Python's parser"),
    FileCase("deep-prelude", _deep("x = " + "-" * 100000 + "1", kind="prelude"), "nested too deeply to analyse"),
    FileCase("step-syntax-error", _deep("x = (1 +"), "Step 'z' (cell 2): line 2: '(' was never closed"),
    FileCase("step-bad-dedent", _deep("x = 1\n    y = 2\n  z = 3"), "Step 'z' (cell 2): line 3: unexpected indent"),
    FileCase("params-bad-dedent", _deep("q = 1\n    r = 2\n  s = 3", kind="params"), "cell 2: %%params line 3: unexpected indent"),
]


@dataclass(frozen=True)
class ArgsCase:
    """A bad `kfmagic` command line; `{nb}` stands for a valid notebook (BASE)."""

    id: str
    args: tuple
    message: str
    status: int = 2


ARGS_CASES = [
    ArgsCase("no-command", (), "the following arguments are required: COMMAND"),
    ArgsCase("unknown-command", ("launch", "{nb}"), "argument COMMAND: invalid choice: 'launch'"),
    ArgsCase("no-notebook", ("run",), "kfmagic run: error: the following arguments are required: NOTEBOOK.ipynb"),
    ArgsCase("unknown-option", ("show", "{nb}", "--verbose"), "unrecognized arguments: --verbose"),
    ArgsCase("workers-not-int", ("run", "{nb}", "--workers", "many"), "argument --workers: invalid int value: 'many'"),
    ArgsCase("workers-twice", ("run", "{nb}", "--workers", "2", "--workers", "3"), "argument --workers: given twice"),
    ArgsCase("runner-and-local", ("run", "{nb}", "--runner", "kfp", "--local"), "argument --local: given twice"),
    ArgsCase("runner-unknown", ("run", "{nb}", "--runner", "cloud"), "argument --runner: invalid choice: 'cloud'"),
    ArgsCase("output-twice", ("compile", "{nb}", "-o", "a.yaml", "-o", "b.yaml"), "argument -o/--output: given twice"),
    ArgsCase("convert-output-twice", ("convert", "{nb}", "-o", "a.ipynb", "--output", "b.ipynb"), "argument -o/--output: given twice"),
    ArgsCase("host-twice", ("compile", "{nb}", "--host", "http://a", "--host", "http://b"), "argument --host: given twice"),
    ArgsCase("token-and-cookies", ("run", "{nb}", "--token", SECRET, "--cookies", SECRET), "not allowed with argument --token"),
    ArgsCase("token-twice", ("run", "{nb}", "--token", SECRET, "--token", SECRET), "argument --token: given twice"),
    ArgsCase("token-misspelt", ("run", "{nb}", f"--tokn={SECRET}"), "unrecognized arguments: --tokn=***"),
    ArgsCase("token-stray-word", ("compile", "{nb}", "--token", SECRET, SECRET + "2"), "unrecognized arguments: ***"),
    ArgsCase("token-on-show", ("show", "{nb}", "--token", SECRET), "unrecognized arguments: --token ***"),
    ArgsCase("missing-notebook", ("run", "missing.ipynb"), "kfmagic run: missing.ipynb: no such file.", 1),
    ArgsCase("notebook-is-a-directory", ("check", "."), "kfmagic check: . is a directory", 1),
    ArgsCase("param-unknown", ("run", "{nb}", "--param", "nope=1"), "kfmagic run: --param nope: no such parameter.", 1),
    ArgsCase("param-no-value", ("run", "{nb}", "--param", "rate"), "--param 'rate': write NAME=VALUE", 1),
    ArgsCase("param-wrong-type", ("run", "{nb}", "--param", "n=3.5"), "--param n='3.5': expected an int like the default 3", 1),
    ArgsCase("workers-zero", ("run", "{nb}", "--workers", "0"), "--workers 0: at least one step must run at a time", 1),
    ArgsCase("sweep-command-range-under-grid", ("sweep", "{nb}", "--param", "n=1..4"), "kfmagic sweep: --param n=1..4 is a range", 1),
    ArgsCase("sweep-command-random-not-int", ("sweep", "{nb}", "--param", "n=1..4", "--random", "few"), "argument --random: invalid int value", 2),
    ArgsCase("token-path-missing", ("run", "{nb}", "--token-path", "/nonexistent/token"), "--token-path /nonexistent/token: no such file", 1),
    ArgsCase("convert-without-kale-tags", ("convert", "{nb}", "-o", "out.ipynb"), "no Kale tags to convert", 1),
    ArgsCase("cli-prune-no-keep", ("prune", "{nb}"), "kfmagic prune: error: the following arguments are required: --keep"),
    ArgsCase("prune-keep-not-int", ("prune", "{nb}", "--keep", "all"), "argument --keep: invalid int value: 'all'"),
    ArgsCase("cli-prune-keep-negative", ("prune", "{nb}", "--keep", "-2"), "prune --keep -2: say how many of the newest runs to keep", 1),
    ArgsCase("cli-compare-unknown-run", ("compare", "{nb}", "nosuchrun"), "kfmagic compare: No run 'nosuchrun' among the runs kept in", 1),
    ArgsCase("compile-under-a-file", ("compile", "{nb}", "-o", "{nb}/pipeline.yaml"), "is a file, not a folder; give -o a path in a folder.", 1),
]
