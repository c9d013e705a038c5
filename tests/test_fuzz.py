"""Fuzzing the magic-line parser and the analysis: whatever text they get, they raise only kfmagic's
own errors (one message each), and the splitter reads words as a shell does.

Bounded to a few seconds (a few hundred examples per property, no example database on disk).
"""

import shlex

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from kfmagic import syntax
from kfmagic.analysis import AnalysisError, analyze
from kfmagic.errors import KfmagicError

OWN_ERRORS = (KfmagicError, AnalysisError, UsageError)
FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

OPTIONS = [
    "--after", "--outputs", "--metrics", "--image", "--packages", "--no-install", "--cpu", "--memory", "--gpu",
    "--gpu-type", "--retries", "--cache", "--no-cache", "--env", "--display-name", "--secret", "--volume",
    "--param", "--workers", "--runner", "--local", "--wait", "--host", "--namespace", "--experiment", "--token",
    "--token-path", "--cookies", "--notebook", "-o", "--output", "--", "-", "--tok", "--c", "-h", "--help",
]
SUBCOMMANDS = ["init", "show", "check", "run", "compile", "config", "status", "remove", "reset", "frob"]
VALUES = [
    "z", "load", "Train", "1st", "2", "0", "-1", "2x", "500m", "4Gi", "4Gb", "A=1", "1A=x", "=", "x=", "a:b:C",
    "pvc:/data", "pvc:rel", "local", "kfp", "cloud", "true", "[1, 2]", "{'a': 1}", "None", "é", "名前", "🙂",
    "\x00", "\\", "\\\\", "#", "# c", "a#b", "?", "%", "%%step", "$HOME", "*", "'", '"', "'a b'", '"a # b"', "''",
    "x" * 300,
]
WORD = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.sampled_from(SUBCOMMANDS), st.text(max_size=6))
GAP = st.sampled_from([" ", "  ", "\t", "=", "", " # ", "\\ "])


@st.composite
def magic_lines(draw):
    """A line made of the words magic lines use, joined as users (mis)type them."""
    words = draw(st.lists(WORD, max_size=10))
    gaps = draw(st.lists(GAP, min_size=len(words), max_size=len(words)))
    return "".join(word + gap for word, gap in zip(words, gaps))


LONG_LINES = st.builds(lambda word, count: f"{word} " * count, WORD, st.integers(100, 1000))
LINES = st.one_of(magic_lines(), st.text(max_size=80), st.text(alphabet="-=#'\" \\az\x00", max_size=40), LONG_LINES)
CODE_WORDS = [
    "x", "y", "=", "(", ")", "[", "]", "{", "}", ":", ",", ".", "+", "-", "*", "**", "lambda", "def", "class",
    "if", "else", "for", "in", "while", "return", "yield", "await", "async", "global", "nonlocal", "import",
    "from", "as", "with", "try", "except", "match", "case", "del", "walrus", ":=", "f'{x}'", "'s'", "1", "\n",
    "\n    ", "%time", "%%time", "!ls", "?", "??", "%pipeline run", "get_ipython()", "\\", "#", "\x00", "é",
]
CODE = st.one_of(
    st.lists(st.sampled_from(CODE_WORDS), max_size=30).map(" ".join),
    st.text(max_size=120),
    st.builds(lambda opener, depth: "x = " + opener * depth, st.sampled_from(["(", "[", "-", "not ", "{1:"]), st.integers(1, 3000)),
)


@FUZZ
@given(LINES)
def test_the_splitter_raises_only_its_own_message(line):
    try:
        syntax.split_line(line)
    except KfmagicError:
        pass


@FUZZ
@given(st.lists(st.text(max_size=8), max_size=6), st.text(max_size=20))
def test_the_splitter_reads_quoted_words_back_and_ignores_a_comment(words, comment):
    line = shlex.join(words)
    assert syntax.split_line(line) == words
    assert syntax.split_line(f"{line} #{comment}") == words


@pytest.mark.filterwarnings("error")  # and nothing printed on the way
@FUZZ
@given(LINES)
def test_pipeline_lines_raise_only_kfmagics_errors(line):
    try:
        syntax.parse_pipeline_line(line)
    except OWN_ERRORS:
        pass


@pytest.mark.filterwarnings("error")  # and nothing printed on the way
@FUZZ
@given(st.sampled_from(["step", "step z", "prelude", "params"]), LINES, CODE)
@example("params", "", "x \n     x \n x")  # found by this test: IPython's tokenizer raised IndentationError
def test_marked_cells_raise_only_kfmagics_errors(magic, line, body):
    try:
        syntax.parse_cell(f"%%{magic} {line}\n{body}")
    except OWN_ERRORS:
        pass


@pytest.mark.filterwarnings("error")  # and nothing printed on the way
@FUZZ
@given(CODE)
@example("x \n     x \n x")
def test_the_analysis_raises_only_analysis_errors(text):
    try:
        analyze(syntax.to_python(text))
    except AnalysisError:
        pass


@FUZZ
@given(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters=" \t\r\n'\"\\#"), min_size=1, max_size=20),
    st.sampled_from([
        'config --token "{s}', "config --cookies 'x={s}", "config --token={s} {s}", "config --tok {s} {s}",
        "config --token {s} --token {s}", "--token {s}", "run --token {s}", "config --tokn={s}",
        "config --token {s} --cookies {s}", "config --cookie {s} --host", "config --token {s}\\", "init --token={s}",
    ]),
)
def test_no_message_shows_a_token(token, template):
    secret = f"Zq9{token}"
    try:
        syntax.parse_pipeline_line(template.format(s=secret))
    except KfmagicError as error:
        assert "Zq9" not in str(error)
