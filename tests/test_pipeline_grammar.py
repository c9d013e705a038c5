"""The `%pipeline` grammar and the rest of kfmagic.syntax's line handling: what each subcommand's line
means, the reference it shows, where an open quote is said to be, which words are credentials and
how messages hide them, where an unmarked cell defined a name, and what a %%params cell declares.

The %pipeline parser is built afresh here (`_pipeline_parser`, as at import) so that the tests
exercise what builds it, not only the copy built once when kfmagic was imported.
"""

import argparse

import pytest
from IPython.core.error import UsageError

from kfmagic import syntax
from kfmagic.errors import CellSyntaxError


@pytest.fixture
def grammar():
    return syntax._pipeline_parser()


def parsed(grammar, line):
    return vars(grammar[0].parse_args(line.split()))


@pytest.mark.parametrize("line, meaning", [
    ("init wine --experiment demos --notebook nb.ipynb --image img:1",
     {"command": "init", "name": "wine", "experiment": "demos", "notebook": "nb.ipynb", "image": "img:1"}),
    ("init wine", {"command": "init", "name": "wine", "experiment": None, "notebook": None, "image": None}),
    ("show", {"command": "show"}), ("check", {"command": "check"}), ("reset", {"command": "reset"}),
    ("run", {"command": "run", "param": [], "workers": None, "runner": None, "wait": False, "cache": True,
             "start_from": None, "isolate": False}),
    ("run --param a=1 --param b=2 --workers 3 --runner kfp-local --wait --no-cache --from train --isolate",
     {"param": ["a=1", "b=2"], "workers": 3, "runner": "kfp-local", "wait": True, "cache": False,
      "start_from": "train", "isolate": True}),
    ("run --local", {"runner": "local"}), ("run --runner kfp", {"runner": "kfp"}),
    ("compile -o out.yaml", {"command": "compile", "output": "out.yaml"}), ("compile --output x.yaml", {"output": "x.yaml"}),
    ("compile", {"output": None}),
    ("config --host http://h --namespace ns --experiment e --token t",
     {"command": "config", "host": "http://h", "namespace": "ns", "experiment": "e", "token": "t",
      "token_path": None, "cookies": None}),
    ("config --token-path /f", {"token_path": "/f", "token": None}), ("config --cookies c=1", {"cookies": "c=1"}),
    ("status", {"command": "status", "run_id": None}), ("status r1", {"run_id": "r1"}),
    ("cancel", {"command": "cancel", "run_id": None}), ("cancel r2", {"run_id": "r2"}),
    ("remove train", {"command": "remove", "name": "train"}),
    ("logs train", {"command": "logs", "step": "train", "run_id": None}), ("logs train r3", {"run_id": "r3"}),
    ("config --store s3://bucket/prefix", {"command": "config", "store": "s3://bucket/prefix"}),
    ("runs", {"command": "runs"}), ("compare", {"command": "compare", "run_ids": []}),
    ("compare r1 r2", {"run_ids": ["r1", "r2"]}), ("prune --keep 3", {"command": "prune", "keep": 3, "dry_run": False}),
    ("prune --keep 0 --dry-run", {"keep": 0, "dry_run": True}),
    ("pull train", {"command": "pull", "step": "train", "run_id": None}), ("pull train r3", {"run_id": "r3"}),
    ("sweep", {"command": "sweep", "param": [], "grid": False, "random": None, "seed": None, "metric": None,
               "maximize": None, "workers": None, "runner": None, "cache": True, "isolate": False}),
    ("sweep --param C=1,2 --param k=a --random 4 --seed 7 --metric fit.acc --minimize --workers 2 --local --no-cache",
     {"param": ["C=1,2", "k=a"], "random": 4, "seed": 7, "metric": "fit.acc", "maximize": False, "workers": 2,
      "runner": "local", "cache": False}),
    ("sweep --grid --maximize --runner kfp-local --isolate", {"grid": True, "maximize": True, "runner": "kfp-local", "isolate": True}),
])
def test_each_subcommand_line_means_what_the_reference_says(grammar, line, meaning):
    found = parsed(grammar, line)
    assert {key: found.get(key, "<absent>") for key in meaning} == meaning


@pytest.mark.parametrize("line, error", [
    ("", "the following arguments are required: SUBCOMMAND"),
    ("frob", "argument SUBCOMMAND: invalid choice: 'frob'"),
    ("init", "the following arguments are required: name"),
    ("remove", "the following arguments are required: name"),
    ("run --workers many", "argument --workers: invalid int value: 'many'"),
    ("run --runner cloud", "argument --runner: invalid choice: 'cloud' (choose from 'local', 'kfp-local', 'kfp')"),
    ("run --runner kfp --local", "argument --local: given twice in this line (--local and --runner set the same "
                                 "thing); give one of them once."),
    ("run --local --runner kfp", "argument --runner: given twice in this line (--runner and --local set the same "
                                 "thing); give one of them once."),
    ("run --wait --wait", "argument --wait: given twice in this line; give it once."),
    ("run --no-cache --no-cache", "argument --no-cache: given twice in this line; give it once."),
    ("run --isolate --isolate", "argument --isolate: given twice in this line; give it once."),
    ("run --from a --from b", "argument --from: given twice in this line; give it once."),
    ("init a --experiment x --experiment y", "argument --experiment: given twice in this line; give it once."),
    ("compile -o a --output b", "argument -o/--output: given twice in this line; give it once."),
    ("config --host a --host b", "argument --host: given twice in this line; give it once."),
    ("config --store a --store b", "argument --store: given twice in this line; give it once."),
    ("init a --notebook x --notebook y", "argument --notebook: given twice in this line; give it once."),
    ("config --token a --cookies b", "argument --cookies: not allowed with argument --token"),
    ("config --token-path a --token b", "argument --token: not allowed with argument --token-path"),
    ("status a b", "unrecognized arguments: b"),
    ("prune", "the following arguments are required: --keep"),
    ("prune --keep 1 --keep 2", "argument --keep: given twice in this line; give it once."),
    ("pull", "the following arguments are required: STEP"),
    ("runs r1", "unrecognized arguments: r1"),
    ("sweep --grid --random 3", "argument --random: not allowed with argument --grid"),
    ("sweep --random x", "argument --random: invalid int value: 'x'"),
    ("sweep --maximize --minimize", "argument --minimize: given twice in this line (--minimize and --maximize set the "
                                    "same thing); give one of them once."),
    ("sweep --seed 1 --seed 2", "argument --seed: given twice in this line; give it once."),
    ("sweep --metric a.b --metric c.d", "argument --metric: given twice in this line; give it once."),
])
def test_a_line_the_grammar_refuses_says_which_argument_and_why(grammar, line, error):
    with pytest.raises(UsageError) as caught:
        grammar[0].parse_args(line.split())
    assert error in str(caught.value)


def test_the_reference_lists_every_subcommand_and_the_form_of_each_value(grammar):
    _, reference, subcommands, _ = grammar
    known = ["init", "show", "check", "run", "compile", "config", "status", "cancel", "remove", "reset"]
    assert [name for name in subcommands if name in known] == known  # in this order, among any others
    for usage in (
        "%pipeline SUBCOMMAND ...", "%pipeline init [--experiment EXPERIMENT] [--notebook PATH]", "name",
        "[--param NAME=VALUE] [--workers WORKERS]", "[--runner {local,kfp-local,kfp}] [--local] [--wait]",
        "[--from STEP]", "%pipeline compile [-o PATH]", "-o PATH, --output PATH", "[--token TOKEN | --token-path FILE | --cookies COOKIES]",
        "[--store URL]", "%pipeline status [RUN]", "%pipeline cancel [RUN]", "%pipeline remove name", "%pipeline reset",
        "%pipeline sweep [--param NAME=VALUES] [--grid | --random N]", "[--seed SEED] [--metric STEP.NAME] [--maximize]",
    ):
        assert usage in reference, usage
    listed = [reference.index(f"\n    {name}  ") for name in subcommands]  # each with its one-line help
    assert listed == sorted(listed)
    assert "\n  %pipeline show\n\n::\n\n  %pipeline check\n" in reference  # sections one blank line apart


def test_the_run_and_connection_options_are_the_same_on_any_parser():
    parser = syntax.add_connection_arguments(syntax.add_run_arguments(argparse.ArgumentParser(prog="kfmagic run")))
    found = vars(parser.parse_args(["--param", "a=1", "--local", "--host", "h", "--token-path", "f"]))
    assert found == {"param": ["a=1"], "workers": None, "runner": "local", "wait": False, "cache": True,
                     "start_from": None, "isolate": False, "host": "h", "namespace": None, "experiment": None,
                     "token": None, "token_path": "f", "cookies": None}


@pytest.mark.parametrize("line, said", [
    ('init "wine', 'the " opened in word 2 is never closed'),
    ('init ab"cd', 'the " opened in word 2 is never closed'),
    ('init x\\ y "z', 'the " opened in word 3 is never closed'),
    ("config --env=A 'x", "the ' opened after --env is never closed"),
    ("config --token=Zq9secret 'x", "the ' opened after --token is never closed"),
    ("init wine\\", "the line ends with a \\ in word 2 that escapes nothing"),
])
def test_an_open_quote_or_a_dangling_backslash_is_placed_without_showing_values(line, said):
    with pytest.raises(CellSyntaxError) as caught:
        syntax.parse_pipeline_line(line)
    assert said in str(caught.value) and "Zq9secret" not in str(caught.value)


@pytest.mark.parametrize("option", [
    "--token", "--TOKEN", "--tok", "--toekn", "--tokn", "-t", "--auth-token", "--cookies", "--cookie", "--co",
    "--cokie", "-c", "--session-cookie",
])
def test_credential_options_and_their_misspellings_hold_secrets(option):
    assert syntax.secret_values([option, "Zq9"]) == ["Zq9"]
    assert syntax.secret_values([f"{option}=Zq9", "stray"]) == ["Zq9", "stray"]


@pytest.mark.parametrize("option", ["--token-path", "--token-p", "--token-", "--host", "--namespace", "--experiment", "--image"])
def test_other_options_hold_no_secret(option):
    assert syntax.secret_values([option, "visible"]) == []
    assert syntax.secret_values([f"{option}=visible", "next"]) == []


def test_the_words_after_a_credential_are_secret_until_the_next_option():
    words = ["config", "--host=h", "--token", "T1", "T2", "--namespace", "ns", "--cookies=C1", "C2"]
    assert syntax.secret_values(words) == ["T1", "T2", "C1", "C2"]
    assert syntax.secret_values(["--token", "-starts-with-a-dash", "--host", "h"]) == ["-starts-with-a-dash"]


def test_a_secret_inside_a_longer_one_does_not_leave_the_rest_showing():
    words = ["--token", "x-zz", "zz"]
    assert syntax.redact("bad words x-zz and zz, not xzz", words) == "bad words *** and ***, not xzz"


def test_a_pipeline_line_error_names_the_subcommand_only_when_there_is_one():
    with pytest.raises(CellSyntaxError) as caught:
        syntax.parse_pipeline_line("frob --x")
    assert str(caught.value).startswith("%pipeline: argument SUBCOMMAND: invalid choice: 'frob'")
    with pytest.raises(CellSyntaxError) as caught:
        syntax.parse_pipeline_line("run --workers x")
    assert str(caught.value) == "%pipeline run: argument --workers: invalid int value: 'x'\nSee %pipeline? for the options."


def test_the_last_unmarked_cell_that_assigns_a_name_is_the_one_named():
    cells = [(1, "x = 1"), (2, "x = 2\ny = 1"), (3, "def (:"), (4, "%%step a\nx = 3"), (5, ""), (6, "print(x)")]
    assert syntax.last_assigner("x", cells) == 2
    assert syntax.last_assigner("y", cells) == 2
    assert syntax.last_assigner("z", cells) is None


def test_a_params_cell_declares_literal_defaults_annotated_or_not():
    assert syntax.parse_params("rate: float = 0.1\nname = 'x'\na = b = [1, {'k': True}]") == {
        "rate": 0.1, "name": "x", "a": [1, {"k": True}], "b": [1, {"k": True}]
    }


@pytest.mark.parametrize("code, said", [
    ("\nx = 1\nprint(x)", "%%params line 3: `print(x)` is not a parameter. Each line must assign a literal to a "
                          "name, e.g. `learning_rate = 0.1`; move other code to a step or the %%prelude."),
    ("\nrate: float", "%%params line 2: `rate: float` is not a parameter. Each line must assign a literal to a "
                     "name, e.g. `learning_rate = 0.1`; move other code to a step or the %%prelude."),
    ("\nd['k'] = 1", "%%params line 2: `d['k'] = 1` is not a parameter. Each line must assign a literal to a "
                    "name, e.g. `learning_rate = 0.1`; move other code to a step or the %%prelude."),
    ("\nsize = (1, 2)", "%%params line 2: `size = (1, 2)`: a parameter's default must be a literal int, float, str, "
                        "bool, or a list/dict of these, not an expression. Write the tuple as a list."),
    ("\nseed = None", "%%params line 2: `seed = None`: a parameter's default must be a literal int, float, str, "
                      "bool, or a list/dict of these, not an expression. None has no parameter type: give a value "
                      "of the type the parameter takes."),
    ("\nn = 2 * 3", "%%params line 2: `n = 2 * 3`: a parameter's default must be a literal int, float, str, bool, or "
                    "a list/dict of these, not an expression."),
    ("\nm = {1: 'a'}", "%%params line 2: `m = {1: 'a'}`: a parameter's default must be a literal int, float, str, "
                      "bool, or a list/dict of these, not an expression."),
    ("\nx = (", "%%params line 2: '(' was never closed"),
])
def test_what_a_params_cell_cannot_declare_is_one_message_naming_the_line(code, said):
    with pytest.raises(CellSyntaxError) as caught:
        syntax.parse_params(code)
    assert str(caught.value) == said


@pytest.mark.parametrize("line, words", [
    ("--env XDG=1 --image X", ["--env", "XDG=1", "--image", "X"]),
    ("--display-name a\\ #b", ["--display-name", "a #b"]),  # an escaped space does not start a word
    ("--display-name 'a b' #c", ["--display-name", "a b"]),
])
def test_the_splitter_reads_escapes_and_comments_as_a_shell_and_python_do(line, words):
    assert syntax.split_line(line) == words


@pytest.mark.parametrize("text, kind, name", [
    ("", None, None), ("\n\n", None, None), (" %%step a\n x = 1", "step", "a"), ("%%step a", "step", "a"),
    ("\n  %%prelude\n  import os", "prelude", None),
])
def test_a_cell_is_read_as_ipython_reads_it(text, kind, name):
    spec = syntax.parse_cell(text)
    assert (spec.kind, spec.name) == (kind, name) if kind else spec is None
    if spec is not None and "\n" not in text.strip():
        assert spec.code.strip() == ""  # a magic line alone: a step of no code


def test_a_bad_step_name_says_what_a_name_may_be():
    with pytest.raises(CellSyntaxError) as caught:
        syntax.parse_cell("%%step Train\nx = 1")
    assert str(caught.value) == (
        "%%step Train: 'Train' is not a valid name. Use lowercase letters, digits, '-' and '_', starting with a "
        "letter (at most 63 characters), e.g. 'train_model'."
    )


@pytest.mark.parametrize("line, asks", [
    ("", True), ("   ", True), ("-h", True), (" --help ", True), ("# just a comment", True),
    ("run", False), ("run --help", False), ("-x", False), ("'open", False),
])
def test_an_empty_line_or_a_plea_for_help_gets_the_list_of_subcommands(line, asks):
    assert syntax.asks_for_help(line) is asks


def test_the_summary_lists_each_subcommand_with_its_line_in_order(grammar):
    _, _, subcommands, summary = grammar
    lines = summary.splitlines()
    assert lines[:2] == [
        "%pipeline SUBCOMMAND: build, check and run the notebook's pipeline (%pipeline? for every option).", ""
    ]
    assert [line.split()[0] for line in lines[2:]] == list(subcommands)
    assert all(len(line.split(None, 1)) == 2 for line in lines[2:])  # each with what it does
