"""The fixed cost kfmagic adds per step, against bare Python processes run the same way.

    python bench/step_overhead.py [--steps 12] [--heavy-steps 2] [--repeats 3] [--no-kfp-local]

Each row times a kfmagic run and its baseline alternately (so both see the same machine load),
--repeats times, and reports the best of each, as wall ms per step and as CPU ms per step
(user+sys of this process and its children: less sensitive to other load on the machine).
  * N trivial steps (`x_i = i`, no data between them), local backend, workers=1,
    vs N `python -c pass` processes one after another;
  * the same with workers=CPUs, vs N `python -c pass` with CPUs of them at a time;
  * a chain of N steps, each reading the previous step's int (one small file per edge),
    vs N sequential `python -c pass`;
  * `python -m kfmagic.runtime SPEC.json` alone (no parent orchestration), for a step that
    saves its one variable and for the same step saving nothing, vs one `python -c pass`;
  * N steps under `%%prelude import pandas, sklearn`, workers=CPUs,
    vs N `python -c "import pandas, sklearn"` with CPUs at a time;
  * [kfp-local runner] the N trivial steps through `Pipeline.run(runner="kfp-local")` (compiled
    IR run by kfp.local, one task at a time), if kfmagic.backends.kfp_local exists.
"""

import argparse
import importlib.util
import json
import os
import resource
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


def _cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(fn):
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - wall, _cpu() - cpu


def paired(repeats, kf, base):
    """Best (wall, cpu) of kf and of base, measured alternately."""
    kf_runs, base_runs = [], []
    for _ in range(repeats):
        base_runs.append(measure(base))
        kf_runs.append(measure(kf))
    best = lambda runs: (min(r[0] for r in runs), min(r[1] for r in runs))  # noqa: E731
    return best(kf_runs), best(base_runs)


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


def runtime_direct(workdir, save=True):
    """A call running `python -m kfmagic.runtime SPEC` alone, on the spec a one-step local run wrote.

    The step assigns `x0`, which a leaf step keeps (so serde.dump runs); with save=False the
    same spec is rewritten with nothing to keep, so serde.dump (and its pickler imports) never runs.
    """
    run = run_pipeline(trivial_cells(1), workers=1)
    spec = os.path.join(run.run_dir, "s0", "spec.json")
    if not save:
        with open(spec) as file:
            data = json.load(file)
        data["keep"], data["outputs"] = [], []
        spec = os.path.join(run.run_dir, "s0", "spec-nosave.json")
        with open(spec, "w") as file:
            json.dump(data, file)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.path.dirname(HERE)) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")

    def once():
        subprocess.run([sys.executable, "-m", "kfmagic.runtime", spec], cwd=workdir, env=env, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    return once


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="N for the trivial-step rows (default 12)")
    parser.add_argument("--heavy-steps", type=int, default=2,
                        help="N for the pandas+sklearn prelude row (default 2; 0 skips it)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per row; best reported (default 3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallelism of the parallel rows (default: CPUs)")
    parser.add_argument("--no-kfp-local", action="store_true", help="skip the kfp-local rows")
    args = parser.parse_args()
    n, workers, repeats = args.steps, args.workers, args.repeats

    scratch = tempfile.mkdtemp(prefix="kfmagic-bench-")
    os.chdir(scratch)  # runs write .kfmagic/runs/ under the working directory
    print(f"step_overhead: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"best of {repeats} alternating runs; scratch {scratch}")
    print(f"{'':<46}{'kfmagic':>17}{'baseline':>17}{'ratio':>13}{'added':>9}")
    print(f"{'':<46}{'wall / cpu ms':>17}{'wall / cpu ms':>17}{'wall / cpu':>13}{'wall ms':>9}   baseline")
    run_pipeline(trivial_cells(2), workers)  # warm-up: page cache, imports of this process
    bare_processes(2, "pass", 1)
    rows = []

    def row(label, steps, kf, base, base_label):
        (kf_wall, kf_cpu), (base_wall, base_cpu) = kf, base
        per = lambda seconds: seconds / steps * 1000  # noqa: E731
        rows.append(dict(label=label, steps=steps, wall_ms=per(kf_wall), cpu_ms=per(kf_cpu),
                         baseline=base_label, baseline_wall_ms=per(base_wall), baseline_cpu_ms=per(base_cpu)))
        print(f"{label:<46}{per(kf_wall):>9.0f} /{per(kf_cpu):>5.0f}{per(base_wall):>11.0f} /{per(base_cpu):>5.0f}"
              f"{kf_wall / base_wall:>7.2f} /{kf_cpu / base_cpu:>5.2f}{per(kf_wall) - per(base_wall):>+8.0f}     {base_label}", flush=True)

    seq = lambda: bare_processes(n, "pass", 1)  # noqa: E731
    row(f"local, {n} trivial steps, workers=1 (per step)", n,
        *paired(repeats, lambda: run_pipeline(trivial_cells(n), 1), seq), "python -c pass, sequential")
    row(f"local, {n} trivial steps, workers={workers} (per step)", n,
        *paired(repeats, lambda: run_pipeline(trivial_cells(n), workers), lambda: bare_processes(n, "pass", workers)),
        f"python -c pass, {workers} at a time")
    row(f"local, chain of {n} steps passing an int", n,
        *paired(repeats, lambda: run_pipeline(chain_cells(n), workers), seq), "python -c pass, sequential")
    one_bare = lambda: bare_processes(1, "pass", 1)  # noqa: E731
    row("runtime alone, step saves x0", 1,
        *paired(repeats * 3, runtime_direct(scratch), one_bare), "python -c pass, one process")
    row("runtime alone, step saves nothing", 1,
        *paired(repeats * 3, runtime_direct(scratch, save=False), one_bare), "python -c pass, one process")
    row("local, 1-step pipeline, end to end", 1,
        *paired(repeats * 3, lambda: run_pipeline(trivial_cells(1), 1), one_bare), "python -c pass, one process")

    if args.heavy_steps:
        h = args.heavy_steps
        heavy = [f"%%prelude\n{HEAVY_IMPORTS}"] + trivial_cells(h)
        bare_processes(1, HEAVY_IMPORTS, 1)  # warm-up
        row(f"local, {h} steps, prelude {HEAVY_IMPORTS}", h,
            *paired(max(1, repeats - 1), lambda: run_pipeline(heavy, workers),
                    lambda: bare_processes(h, HEAVY_IMPORTS, workers)),
            f"python -c '{HEAVY_IMPORTS}', {workers} at a time")

    has_kfp_local = importlib.util.find_spec("kfmagic.backends.kfp_local") is not None
    if has_kfp_local and not args.no_kfp_local:
        kfp_repeats = max(1, repeats - 2)
        try:
            run_pipeline(trivial_cells(1), 1, runner="kfp-local")  # warm-up: kfp's imports
            kfp_n, base_n = paired(kfp_repeats, lambda: run_pipeline(trivial_cells(n), 1, runner="kfp-local"), seq)
            kfp_1, base_1 = paired(kfp_repeats, lambda: run_pipeline(trivial_cells(1), 1, runner="kfp-local"), one_bare)
        except Exception as error:  # another helper is building it: report, do not fail the rest
            print(f"[kfp-local runner] not measured: {type(error).__name__}: {str(error)[:200]}")
        else:
            row(f"[kfp-local runner] {n} trivial steps (per step)", n, kfp_n, base_n, "python -c pass, sequential")
            row("[kfp-local runner] 1-step pipeline", 1, kfp_1, base_1, "python -c pass, one process")
            marginal = tuple(a - b for a, b in zip(kfp_n, kfp_1))
            base_marginal = tuple(b * (n - 1) / n for b in base_n)
            row("[kfp-local runner] each step after the first", n - 1, marginal, base_marginal,
                "python -c pass, sequential")
    elif not has_kfp_local:
        print("[kfp-local runner] kfmagic.backends.kfp_local not present: skipped")

    with open(os.path.join(scratch, "step_overhead.json"), "w") as file:
        json.dump(rows, file, indent=1)
    print(f"figures also in {os.path.join(scratch, 'step_overhead.json')}")


if __name__ == "__main__":
    main()
