"""A sweep of 12 combinations shares its expensive preparation: about T + 12t/workers, not 12(T+t).

    python bench/sweep.py [--prep 2] [--train 1] [--workers 4] [--cpu-train 0.5] [--repeats 1]

The notebook has a shared preparation step taking T (--prep seconds) and a training step taking t
(--train seconds) that reads the swept parameter, then a scoring step. `kfmagic sweep NB --param
C=1,...,12 --no-cache --workers W` runs as a user runs it (a subprocess: its start-up counts), and
its time is compared with
  * the ideal, T + 12t/W: the preparation once, then the trainings W at a time; and
  * the naive way, 12(T+t): twelve `kfmagic run --param C=... --no-cache`, one after another
    (timed: the ratio is against what they really took).
Two kinds of work: steps that wait (sleep: I/O, a remote service), where W may exceed the cores,
and steps that compute (a busy loop of --cpu-train seconds) with W = the cores, where the cores
bound it. The best of --repeats is reported; figures go to /tmp/kfmagic-bench-sweep/result.json too.
"""

import argparse
import json
import os
import shutil

import nbformat
from nbformat.v4 import new_code_cell, new_notebook
from notebook_speed import KFMAGIC, wall  # a sibling script: python bench/sweep.py

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COMBINATIONS = 12
WORK = {
    "wait": "import time\ntime.sleep({seconds})",
    "compute": "import time\n_end = time.process_time() + {seconds}\nwhile time.process_time() < _end:\n    pass",
}


def notebook(folder, kind, prep, train):
    """A notebook: params C, a shared prep step taking `prep` s, a train step taking `train` s, a score."""
    cells = [
        "%load_ext kfmagic\n%pipeline init bench-sweep",
        "%%params\nC = 1",
        f"%%step prep\n{WORK[kind].format(seconds=prep)}\ndata = list(range(1000))",
        f"%%step train\n{WORK[kind].format(seconds=train)}\nmodel = sum(data) * C",
        "%%step score --metrics accuracy\naccuracy = model / 1e6",
    ]
    path = os.path.join(folder, f"{kind}.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell(cell) for cell in cells]), path)
    return path


def measure(folder, kind, prep, train, workers, repeats):
    path = notebook(folder, kind, prep, train)
    values = ",".join(str(c) for c in range(1, COMBINATIONS + 1))
    sweep = [*KFMAGIC, "sweep", path, "--param", f"C={values}", "--no-cache", "--workers", str(workers)]
    took = min(wall(sweep, folder)[0] for _ in range(repeats))
    naive = sum(wall([*KFMAGIC, "run", path, "--param", f"C={c}", "--no-cache"], folder)[0] for c in range(1, COMBINATIONS + 1))
    ideal = prep + COMBINATIONS * train / workers
    return {
        "kind": kind, "T": prep, "t": train, "workers": workers, "sweep_s": round(took, 2), "ideal_s": ideal,
        "naive_s": round(naive, 2), "naive_ideal_s": COMBINATIONS * (prep + train),
        "vs_ideal": round(took / ideal, 2), "vs_naive": round(took / naive, 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prep", type=float, default=2.0, help="T: seconds of the shared preparation")
    parser.add_argument("--train", type=float, default=1.0, help="t: seconds of each training (waiting)")
    parser.add_argument("--cpu-train", type=float, default=0.5, help="t: CPU seconds of each training (computing)")
    parser.add_argument("--workers", type=int, default=4, help="W for the waiting steps")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    folder = "/tmp/kfmagic-bench-sweep"
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    started_load = os.getloadavg()[0]
    rows = [
        measure(folder, "wait", args.prep, args.train, args.workers, args.repeats),
        measure(folder, "compute", args.prep / 2, args.cpu_train, os.cpu_count(), args.repeats),
    ]
    print(f"{COMBINATIONS} combinations; sweep = `kfmagic sweep --no-cache`, naive = {COMBINATIONS} x `kfmagic run --no-cache`")
    print(f"load average {started_load:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cores "
          "(other work on the machine stretches the computing row)")
    print(f"{'work':8} {'T':>4} {'t':>4} {'W':>2}  {'sweep':>7}  {'T+12t/W':>7}  {'ratio':>5}  {'naive':>7}  {'12(T+t)':>7}  {'sweep/naive':>11}")
    for row in rows:
        print(
            f"{row['kind']:8} {row['T']:4g} {row['t']:4g} {row['workers']:2d}  {row['sweep_s']:6.2f}s  {row['ideal_s']:6.2f}s  "
            f"{row['vs_ideal']:5.2f}  {row['naive_s']:6.2f}s  {row['naive_ideal_s']:6.2f}s  {row['vs_naive']:11.3f}"
        )
    with open(os.path.join(folder, "result.json"), "w") as file:
        json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main()
