"""The fixed cost kfmagic adds per step, against bare Python processes run the same way.

    python bench/step_overhead.py [--steps 16] [--heavy-steps 4] [--repeats 3] [--no-kfp-local]

Rows (each timed end to end, best of --repeats, after one warm-up):
  * N trivial steps (`x_i = i`, no data between them) run by the local backend with workers=1,
    against N `python -c pass` processes run one after another;
  * the same with workers=CPUs, against N `python -c pass` with CPUs of them at a time;
  * a chain of N steps, each reading the previous one's small value (marshalling a small int
    through a file per edge), against N sequential `python -c pass`;
  * N steps under a prelude `import pandas, sklearn` (workers=CPUs), against N
    `python -c "import pandas, sklearn"` with CPUs at a time;
  * the same N trivial steps through `runner="kfp-local"` (the compiled IR run by kfp.local,
    one task at a time), against N sequential `python -c pass`, if that backend exists.
Also: one `python -m kfmagic.runtime SPEC.json` run directly (no orchestration), to split the
cost between the step process itself and the parent that schedules it.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from kfmagic.display import TextProgress  # noqa: E402
from kfmagic.registry import Pipeline  # noqa: E402
from kfmagic.syntax import parse_cell  # noqa: E402

HEAVY_IMPORTS = "import pandas, sklearn"


def best_of(repeats, fn):
    fn()  # warm-up: page cache, .pyc files
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_processes(n, code, parallel):
    """n `python -c CODE` processes, `parallel` at a time, output captured as the local backend does."""

    def one(_):
        done = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert done.returncode == 0, done.stderr

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, range(n)))


def pipeline_of(cells):
    pipeline = Pipeline(name="bench")
    for number, source in enumerate(cells, 1):
        pipeline.add(parse_cell(source), label=f"cell {number}")
    return pipeline


def trivial_cells(n):
    return [f"%%step s{i}\nx{i} = {i}" for i in range(n)]


def chain_cells(n):
    return ["%%step s0\nx0 = 0"] + [f"%%step s{i}\nx{i} = x{i - 1} + 1" for i in range(1, n)]


def run_pipeline(cells, workers, runner="local"):
    pipeline = pipeline_of(cells)
    with open(os.devnull, "w") as devnull:
        run = pipeline.run(workers=workers, runner=runner, progress=TextProgress(devnull))
    assert run.state == "SUCCEEDED", run.failure_message()
    return run


def runtime_direct(workdir):
    """Time `python -m kfmagic.runtime SPEC` alone, on the spec a one-step local run wrote."""
    run = run_pipeline(trivial_cells(1), workers=1)
    spec = os.path.join(run.run_dir, "s0", "spec.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.path.dirname(HERE)) if p))

    def once():
        subprocess.run([sys.executable, "-m", "kfmagic.runtime", spec], cwd=workdir, env=env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    return once


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=16, help="N for the trivial-step rows (default 16)")
    parser.add_argument("--heavy-steps", type=int, default=4, help="N for the pandas+sklearn prelude row (default 4; 0 skips it)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row; the best is reported (default 3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallelism of the parallel rows (default: CPUs)")
    parser.add_argument("--no-kfp-local", action="store_true", help="skip the kfp-local row")
    args = parser.parse_args()
    n, workers, repeats = args.steps, args.workers, args.repeats

    scratch = tempfile.mkdtemp(prefix="kfmagic-bench-")
    os.chdir(scratch)  # runs write .kfmagic/runs/ under the working directory
    print(f"step_overhead: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, best of {repeats}, "
          f"scratch {scratch}")
    rows = []

    def row(label, steps, kf, base, base_label):
        rows.append((label, steps, kf, base, base_label))
        ms_kf, ms_base = kf / steps * 1000, base / steps * 1000
        print(f"{label:<44} {ms_kf:8.0f} ms/step  vs {base_label:<34} {ms_base:7.0f} ms/step"
              f"  x{kf / base:5.2f}  (+{ms_kf - ms_base:.0f} ms/step)", flush=True)

    base_seq = best_of(repeats, lambda: bare_processes(n, "pass", 1))
    base_par = best_of(repeats, lambda: bare_processes(n, "pass", workers))
    row(f"local, {n} trivial steps, workers=1", n,
        best_of(repeats, lambda: run_pipeline(trivial_cells(n), 1)), base_seq, "python -c pass, sequential")
    row(f"local, {n} trivial steps, workers={workers}", n,
        best_of(repeats, lambda: run_pipeline(trivial_cells(n), workers)), base_par, f"python -c pass, {workers} at a time")
    row(f"local, chain of {n} steps (int passed on)", n,
        best_of(repeats, lambda: run_pipeline(chain_cells(n), workers)), base_seq, "python -c pass, sequential")
    row("runtime alone: python -m kfmagic.runtime", 1,
        best_of(repeats, runtime_direct(scratch)), best_of(repeats, lambda: bare_processes(1, "pass", 1)),
        "python -c pass, one process")

    if args.heavy_steps:
        h = args.heavy_steps
        heavy = [f"%%prelude\n{HEAVY_IMPORTS}"] + trivial_cells(h)
        row(f"local, {h} steps, prelude {HEAVY_IMPORTS!r}, workers={workers}", h,
            best_of(max(1, repeats - 1), lambda: run_pipeline(heavy, workers)),
            best_of(max(1, repeats - 1), lambda: bare_processes(h, HEAVY_IMPORTS, workers)),
            f"python -c {HEAVY_IMPORTS!r}, {workers} at a time")

    has_kfp_local = importlib.util.find_spec("kfmagic.backends.kfp_local") is not None
    if has_kfp_local and not args.no_kfp_local:
        try:
            kfp_time = best_of(max(1, repeats - 1), lambda: run_pipeline(trivial_cells(n), 1, runner="kfp-local"))
        except Exception as error:  # another helper is building it: report, do not fail the rest
            print(f"[kfp-local] not measured: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        else:
            row(f"[kfp-local runner] {n} trivial steps", n, kfp_time, base_seq, "python -c pass, sequential")
            one = best_of(max(1, repeats - 1), lambda: run_pipeline(trivial_cells(1), 1, runner="kfp-local"))
            print(f"[kfp-local runner] a 1-step pipeline takes {one * 1000:.0f} ms "
                  "(kfp.local's child process, compile, one task)")
    elif not has_kfp_local:
        print("[kfp-local runner] kfmagic.backends.kfp_local not present: skipped")

    one = best_of(repeats, lambda: run_pipeline(trivial_cells(1), 1))
    print(f"local, a 1-step pipeline end to end: {one * 1000:.0f} ms (plan + specs + one process + result)")
    with open(os.path.join(scratch, "step_overhead.json"), "w") as file:
        json.dump([dict(zip(("label", "steps", "seconds", "baseline_seconds", "baseline"), r)) for r in rows], file)


if __name__ == "__main__":
    main()
