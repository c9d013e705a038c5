"""Run by magics_run_helper_script.ipynb with `%run corpus_helpers.py`, as notebooks run shared code."""

BASE = 10


def bump(value):
    return value + 1
