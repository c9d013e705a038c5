"""A pytest plugin for mutation runs only (`-p mutation.fresh_caches`, set in [tool.mutmut]).

mutmut runs every mutant in a fork of a process that has already run the tests once, so whatever
kfmagic remembers between calls was remembered by the original code: the planner's analysis of
each cell, and which classes are live resources. Emptied before each test, so that a mutant is
run by every test that reaches it (and mutmut learns which tests those are).
"""

from kfmagic import plan, serde


def pytest_runtest_setup(item):
    plan._analyze.cache_clear()
    serde._live_kind_of_type.clear()
