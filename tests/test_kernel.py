"""The magics in a real ipykernel driven by nbclient: what a user sees, and what must not change."""

import re

import pytest

PRELUDE = "%load_ext kfmagic"


def test_marked_cells_run_as_plain_cells_and_the_run_leaves_the_kernel_alone(run_cells):
    out = run_cells([
        PRELUDE,
        "%%prelude\nimport math",
        "%%params\nscale = 2",
        "%%step load\ndata = [1, 2, 3]\nprint('loaded', len(data))\nlen(data)",
        "%%step double --metrics total\ndoubled = [x * scale for x in data]\ntotal = sum(doubled)",
        "%%step roots\nroots = [math.sqrt(x) for x in data]",
        "%%step report --after double\nprint('roots', roots)",
        "def user_vars(*skip):\n"
        "    hidden = get_ipython().user_ns_hidden\n"
        "    return {k: (id(v), repr(v)) for k, v in globals().items() if not k.startswith('_') and k not in hidden and k not in skip}\n"
        "snapshot = user_vars()",
        "run = %pipeline run --param scale=5",
        "print(user_vars('run', 'snapshot') == snapshot, run.state, run.metrics, run.load('roots')[1], total)",
    ])
    assert "loaded 3" in out[3] and "3" in out[3].splitlines()[-1]  # output and last value, as a plain cell
    assert "[load] loaded 3" in out[8]
    assert "[report] roots [1.0, 1.4142135623730951, 1.7320508075688772]" in out[8]
    assert "True SUCCEEDED {'double': {'total': 30.0}} 1.4142135623730951 12" in out[9]
