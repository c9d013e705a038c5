"""Bad input gets one message (what, where, how to fix), never a traceback; the kernel lives on unchanged.

The table is tests/bad_input_cases.py. Every kernel case runs in ONE real kernel (one notebook,
executed once for the module), each bad cell between two cells printing a fingerprint of the
user's variables and of the registry. The cases that make sense in a file go through the
`kfmagic` command in-process (a handful also as real subprocesses).
"""

import json
import re
import subprocess

import nbformat
import pytest
from bad_input_cases import ARGS_CASES, BASE, FILE_CASES, KERNEL_CASES, SECRET
from conftest import cell_text, execute, make_notebook

from kfmagic import notebook, syntax
from kfmagic.cli import main
from kfmagic.errors import CellSyntaxError

FINGERPRINT = '''def _fingerprint():
    """The user's variables (names and ids) and everything the registry holds."""
    import kfmagic
    pipeline = kfmagic.pipeline()
    hidden = get_ipython().user_ns_hidden
    names = sorted((k, id(v)) for k, v in globals().items() if not k.startswith("_") and k not in hidden)
    cells = [(c.spec.kind, c.spec.name, c.spec.source) for c in pipeline.cells]
    return repr((names, cells, pipeline.name, pipeline.experiment, pipeline.image, repr(pipeline.connection)))'''
CHECK = "print('fingerprint:', _fingerprint())"
UNDO = ("%pipeline reset", *BASE)  # after a case's setup cells: the base pipeline again
# What is not bad input: comments end magic lines, `#` inside a word or quotes does not.
COMMENTED = (
    "%pipeline init wine --experiment demos  # optional: it's a comment, quotes and all",
    "%%step fits --after load --env COLOR=#fff --display-name 'a # b'  # fits\nw = 1",
)
SHOW_COMMENTED = (
    "import kfmagic\np = kfmagic.pipeline()\n"
    "print(p.name, p.experiment, [(c.spec.name, c.spec.options['after'], c.spec.options['env'], "
    "c.spec.options['display_name']) for c in p.cells if c.spec.name == 'fits'])"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kernel_notebook():
    """The notebook of every kernel case, and where each case's cells are: (before, bad, after)."""
    sources, where = ["%load_ext kfmagic", FINGERPRINT, *BASE], {}
    for case in KERNEL_CASES:
        sources += case.setup
        where[case.id] = (len(sources), len(sources) + 1, len(sources) + 2)
        sources += [CHECK, case.cell, CHECK]
        sources += UNDO if case.setup else ()
    sources += [*COMMENTED, SHOW_COMMENTED]
    return make_notebook(sources), where


@pytest.fixture(scope="module")
def kernel_cells(tmp_path_factory):
    """Runs the notebook once, in a fresh kernel; returns its executed cells and where each case is."""
    nb, where = kernel_notebook()
    cwd = tmp_path_factory.mktemp("kernel")
    with pytest.MonkeyPatch.context() as env:  # kfp's and IPython's per-user files stay in the temp dir
        env.setenv("HOME", str(cwd))
        env.setenv("IPYTHONDIR", str(cwd / ".ipython"))
        execute(nb, cwd, allow_errors=True)
    return nb.cells, where


def plain(text):
    return ANSI.sub("", text)


def printed(cell):
    """What a cell printed on stdout (the kernel may send one print in several stream messages)."""
    return "".join(output.text for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")


def test_the_table_covers_at_least_80_cases():
    assert len(KERNEL_CASES) + len(FILE_CASES) + len(ARGS_CASES) >= 80
    assert len({case.id for case in [*KERNEL_CASES, *FILE_CASES, *ARGS_CASES]}) == len(KERNEL_CASES) + len(FILE_CASES) + len(ARGS_CASES)


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda case: case.id)
def test_in_a_kernel_one_message_and_nothing_changes(kernel_cells, case):
    cells, where = kernel_cells
    before, bad, after = (cells[index] for index in where[case.id])
    shown = plain(cell_text(bad))
    assert [output.output_type for output in bad.outputs if output.output_type == "error"] == ["error"], shown
    assert case.message in shown, shown
    assert "Traceback" not in shown and 'File "' not in shown and "kfmagic/" not in shown, shown
    assert printed(after).startswith("fingerprint:"), "the kernel did not run the next cell"
    assert printed(after) == printed(before), "the bad cell changed the kernel's variables or the registry"
    if case.secret:
        assert case.secret not in json.dumps(bad.outputs)


def test_in_a_kernel_comments_end_magic_lines_and_quoted_hashes_stay(kernel_cells):
    cells, _ = kernel_cells
    assert [output.output_type for cell in cells[-3:-1] for output in cell.outputs] == []
    assert printed(cells[-1]) == "wine demos [('fits', ['load'], ['COLOR=#fff'], 'a # b')]\n"


def write_notebook(tmp_path, sources, name="pipe.ipynb"):
    path = tmp_path / name
    nbformat.write(make_notebook(["%load_ext kfmagic", *sources]), path)
    return str(path)


def in_file(case):
    return [*BASE, *case.setup, case.cell]


FILE_KERNEL_CASES = [case for case in KERNEL_CASES if case.in_file]
COMMANDS = ("check", "show", "run", "compile")  # each reads the file, so each refuses a bad one


@pytest.mark.parametrize("index, case", list(enumerate(FILE_KERNEL_CASES)), ids=[case.id for case in FILE_KERNEL_CASES])
def test_the_same_cell_in_a_file_is_one_message_and_exit_status_1(tmp_path, capsys, index, case):
    command = COMMANDS[index % len(COMMANDS)]
    path = write_notebook(tmp_path, in_file(case))
    assert main([command, path, *(["-o", str(tmp_path / "out.yaml")] if command == "compile" else [])]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kfmagic {command}: ") and case.message in err, err
    assert "Traceback" not in err and not (tmp_path / "out.yaml").exists()


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda case: case.id)
def test_a_malformed_file_is_one_message_and_exit_status_1(tmp_path, capsys, case):
    path = tmp_path / "bad.ipynb"
    path.write_text(case.content)
    assert main([case.command, str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kfmagic {case.command}: ") and case.message in err, err
    assert "Traceback" not in err


def command_line(case, tmp_path):
    nb = write_notebook(tmp_path, BASE)
    return [arg.replace("{nb}", nb) for arg in case.args]


@pytest.mark.parametrize("case", ARGS_CASES, ids=lambda case: case.id)
def test_a_bad_command_line_is_one_message(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    assert main(command_line(case, tmp_path)) == case.status
    out, err = capsys.readouterr()
    assert case.message in err and "Traceback" not in err, err
    assert SECRET not in out + err
    if case.status == 2:
        assert err.startswith("usage: kfmagic")


SUBPROCESS_CASES = [
    ("step-open-double-quote", lambda tmp_path: ["check", write_notebook(tmp_path, in_file(_kernel_case("step-open-double-quote")))],
     'unbalanced quote: the " opened after --display-name', 1),
    ("deep-unary-minus", lambda tmp_path: ["run", _file(tmp_path, "deep-unary-minus")], "nested too deeply to analyse", 1),
    ("kale-steps-defaults-number", lambda tmp_path: ["convert", _file(tmp_path, "kale-steps-defaults-number")],
     "kubeflow_notebook.steps_defaults is 5", 1),
    ("token-stray-word", lambda tmp_path: command_line(_args_case("token-stray-word"), tmp_path), "unrecognized arguments: ***", 2),
]


def _kernel_case(id):
    return next(case for case in KERNEL_CASES if case.id == id)


def _args_case(id):
    return next(case for case in ARGS_CASES if case.id == id)


def _file(tmp_path, id):
    path = tmp_path / f"{id}.ipynb"
    path.write_text(next(case for case in FILE_CASES if case.id == id).content)
    return str(path)


@pytest.mark.parametrize("id, args, message, status", SUBPROCESS_CASES, ids=[case[0] for case in SUBPROCESS_CASES])
def test_as_a_real_command_too(tmp_path, id, args, message, status):
    result = subprocess.run(["kfmagic", *args(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == status and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stdout + result.stderr


# -- what is not bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("line, words", [
    ("init wine --experiment demos  # optional", ["init", "wine", "--experiment", "demos"]),
    ("a --env COLOR=#fff", ["a", "--env", "COLOR=#fff"]),
    ("a 'b # c' \"d # e\"", ["a", "b # c", "d # e"]),
    ("a#b # it's a comment", ["a#b"]),
    ("a \\# b", ["a", "#", "b"]),
    ("# all of it", []),
    ("a\t# tab before", ["a"]),
    ("'it''s' \"q\\\"d\"", ["its", 'q"d']),
])
def test_the_splitter_reads_comments_and_quotes_as_python_and_a_shell_do(line, words):
    assert syntax.split_line(line) == words


def test_list_options_stay_repeatable_and_one_of_a_pair_is_fine():
    spec = syntax.parse_cell("%%step z --after load --after train --env A=1 --env B=2 --no-cache  # two of each\nz = 1")
    assert (spec.options["after"], spec.options["env"], spec.options["cache"]) == (["load", "train"], ["A=1", "B=2"], False)
    args = syntax.parse_pipeline_line("run --param a=1 --param b=2 --local --wait")
    assert (args.param, args.runner, args.wait) == (["a=1", "b=2"], "local", True)


def test_a_commented_file_reads_as_the_kernel_reads_it(tmp_path):
    pipeline, _ = notebook.load(write_notebook(tmp_path, [*BASE, *COMMENTED]))
    [fits] = pipeline.parts_of("fits")
    assert (pipeline.name, pipeline.experiment) == ("wine", "demos")
    assert (fits.spec.options["after"], fits.spec.options["env"], fits.spec.options["display_name"]) == (["load"], ["COLOR=#fff"], "a # b")


@pytest.mark.parametrize("line", [f'config --token "{SECRET}', f"config --token={SECRET} more", f"--cookies {SECRET}"])
def test_a_token_is_redacted_even_from_the_exception_itself(line):
    with pytest.raises(CellSyntaxError) as raised:
        syntax.parse_pipeline_line(line)
    assert SECRET not in str(raised.value) and raised.value.__context__ is None  # no argparse error holding it
