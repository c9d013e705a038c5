"""How a local run compares with running the notebook's code once, as a user runs both.

    python bench/notebook_speed.py [--repeats 3] [--steps 20]

Each row times kfmagic and a baseline alternately, in this script, --repeats times, and reports
the best of each and their ratio (or difference). Every kfmagic figure is the `kfmagic` command
run as a user runs it (a subprocess: its start-up counts), on a notebook written to a scratch
folder under /tmp.
  * chain: --steps trivial steps in a chain after a `%%prelude` importing pandas, numpy and
    scikit-learn, `kfmagic run NB --no-cache`, against `python -c` running the prelude and the
    same step code once, in one process;
  * per extra step: the same chain with twice the steps; (t(2N) - t(N)) / N;
  * waits: six independent steps that each sleep 1 s and a step joining them, default options,
    against the same pipeline whose steps sleep 0 s: the difference;
  * re-run: the chain run again unchanged (every step reused from the cache), against
    `kfmagic check NB`: the difference; then one step in the middle edited: how many steps ran;
  * compile: 100 and 500 trivial steps in a chain, `Pipeline.compile` in this process;
  * check: `kfmagic check` of the demo notebook against `python -c pass`: the difference.
Commands run with Python's bytecode cache on, as an installed package has it: where the
environment turns it off (PYTHONDONTWRITEBYTECODE), every command would compile kfmagic's
modules from source first (~40 ms), which no user's installation does.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # run from a checkout without installing

from kfmagic.registry import Pipeline  # noqa: E402
from kfmagic.syntax import parse_cell  # noqa: E402

PRELUDE = "import pandas as pd\nimport numpy as np\nimport sklearn"
KFMAGIC = [sys.executable, "-m", "kfmagic"]  # what the installed `kfmagic` command runs
COMMAND_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def chain(steps):
    """The step cells of a chain of `steps` trivial steps, each reading the previous one's value."""
    return ["x0 = 0", *(f"x{i} = x{i - 1} + 1" for i in range(1, steps))]


def notebook(folder, name, prelude, steps):
    """Write a notebook of `%%prelude` + one `%%step` per code in `steps`; returns its path."""
    cells = ["%load_ext kfmagic", f"%%prelude\n{prelude}"]
    cells += [f"%%step s{i}\n{code}" for i, code in enumerate(steps)]
    path = os.path.join(folder, name)
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), path)
    return path


def wall(command, cwd):
    """Seconds `command` takes (it must succeed)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=COMMAND_ENV)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return time.perf_counter() - start, done.stdout


def best(repeats, *commands):
    """For each (command, cwd): the best wall time of `repeats` runs, the runs alternating."""
    times = [[] for _ in commands]
    for _ in range(repeats):
        for found, (command, cwd) in zip(times, commands):
            found.append(wall(command, cwd)[0])
    return [min(found) for found in times]


def one_process(prelude, steps):
    return [sys.executable, "-c", "\n".join([prelude, *steps])]


def row(name, kfmagic, baseline, reading, ratio=True):
    figure = f"{kfmagic / baseline:.2f}x" if ratio else f"+{(kfmagic - baseline) * 1000:.0f} ms"
    print(f"{name:<34} kfmagic {kfmagic:7.3f} s   baseline {baseline:7.3f} s   {figure:>9}   {reading}")
    return {"kfmagic": kfmagic, "baseline": baseline, "figure": figure}


def compile_seconds(steps, folder):
    pipeline = Pipeline(name=f"chain{steps}")
    for i, code in enumerate(chain(steps)):
        pipeline.add(parse_cell(f"%%step s{i}\n{code}"))
    start = time.perf_counter()
    pipeline.compile(os.path.join(folder, f"chain{steps}.yaml"))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="kfmagic-bench-")
    n, figures = args.steps, {}
    print(f"{n}-step chain, prelude `{PRELUDE.replace(chr(10), '; ')}`, best of {args.repeats}, in {folder}\n")

    short = notebook(folder, "chain.ipynb", PRELUDE, chain(n))
    long = notebook(folder, "chain2.ipynb", PRELUDE, chain(2 * n))
    kf, base, kf2 = best(
        args.repeats, ([*KFMAGIC, "run", short, "--no-cache"], folder), (one_process(PRELUDE, chain(n)), folder),
        ([*KFMAGIC, "run", long, "--no-cache"], folder),
    )
    figures["chain"] = row(f"chain of {n}, --no-cache", kf, base, "target <= 1.3x")
    per_step = (kf2 - kf) / n
    print(f"{'each extra trivial step':<34} {per_step * 1000:.1f} ms (chains of {n} and {2 * n}: {kf:.3f} s, {kf2:.3f} s)   target <= 30 ms")
    figures["per_step_ms"] = per_step * 1000

    waits = notebook(folder, "waits.ipynb", "import time", [*(f"w{i} = time.sleep(1)" for i in range(6)), "joined = [w0, w1, w2, w3, w4, w5]"])
    zero = notebook(folder, "zero.ipynb", "import time", [*(f"w{i} = time.sleep(0)" for i in range(6)), "joined = [w0, w1, w2, w3, w4, w5]"])
    kf, base = best(args.repeats, ([*KFMAGIC, "run", waits, "--no-cache"], folder), ([*KFMAGIC, "run", zero, "--no-cache"], folder))
    figures["waits"] = row("six 1 s waits and a join", kf, base, "target <= +1200 ms", ratio=False)

    wall([*KFMAGIC, "run", short], folder)  # fill the cache
    kf, base = best(args.repeats, ([*KFMAGIC, "run", short], folder), ([*KFMAGIC, "check", short], folder))
    figures["rerun"] = row("unchanged re-run of the chain", kf, base, "vs check; target <= +200 ms", ratio=False)
    edited = notebook(folder, "chain.ipynb", PRELUDE, [*chain(n)[: n // 2], f"x{n // 2} = x{n // 2 - 1} + 100", *chain(n)[n // 2 + 1:]])
    _, printed = wall([*KFMAGIC, "run", edited], folder)
    ran = sum(1 for line in printed.splitlines() if line.endswith("s)") and "] done" in line)
    print(f"{'one step in the middle edited':<34} {ran} of {n} steps ran (expected {n - n // 2}: it and those after it)")
    figures["edited_ran"] = ran

    for steps in (100, 500):
        seconds = min(compile_seconds(steps, folder) for _ in range(args.repeats))
        print(f"{f'compile, {steps} steps':<34} {seconds:.3f} s   target < {0.2 if steps == 100 else 1.0} s")
        figures[f"compile_{steps}"] = seconds

    demo = os.path.join(REPO, "notebooks", "demo_wine.ipynb")
    kf, base = best(max(args.repeats, 5), ([*KFMAGIC, "check", demo], folder), ([sys.executable, "-c", "pass"], folder))
    figures["check"] = row("check of the demo", kf, base, "vs python -c pass; target <= +100 ms", ratio=False)

    with open(os.path.join(folder, "figures.json"), "w") as file:
        json.dump(figures, file, indent=1)
    shutil.rmtree(os.path.join(folder, ".kfmagic"), ignore_errors=True)
    print(f"\nfigures: {os.path.join(folder, 'figures.json')}")


if __name__ == "__main__":
    main()
