"""How fast kfmagic.serde moves a value to a file and back, and how much memory it takes doing so.

    python bench/marshalling.py [--sizes 10,100] [--dict-sizes 1,10] [--repeats 4] [--no-memory]
                                [--also-serde OLD_SERDE.py]

Values (SIZE is the in-memory size for the array and the DataFrame, the pickle-stream size for
the dict, whose in-memory size is larger):
  array  numpy float64 array of SIZE MB
  frame  pandas DataFrame: 2 float64 + 1 int64 columns and 1 string column (pandas' default
         `str` dtype; object storage when pyarrow is absent), SIZE MB by memory_usage(deep=True)
  dict   {str: {"id": int, "name": str, "score": float, "tags": [str, str]}}, SIZE MB pickled
Ways (each timed best of --repeats, to a file in a temp dir, so mostly page-cache speed):
  serde        kfmagic.serde.dump / kfmagic.serde.load           (what a step does)
  pickle-p5    pickle.dump / pickle.load, protocol 5, in-band    (the baseline: ratio 1.00)
  numpy.save   numpy.save / numpy.load (array only)
  numpy mmap=c numpy.save / numpy.load(mmap_mode="c") (array only): the lazy baseline, mapped
               copy-on-write like serde
  raw-bytes    file.write(buffer) / file.readinto(empty array): the ceiling for an array
  pickle-p5, gc paused   pickle.load with the cyclic GC disabled (dict only): a what-if
  serde[FILE]  with --also-serde FILE: another serde.py (e.g. `git show REV:kfmagic/serde.py`)
Loads are timed twice over, in the same call: the bare load, then "touch" on the loaded value
(array: arr.sum(); frame: sum() of every numeric column; dict: nothing, every object already
exists). serde and numpy mmap=c load lazily: their bare load only MAPS the file and pages are
read when touched, so compare "load+touch" (load time + touch time), which reads all the data
for every way. "touch alone" is the same reduce on the original, already resident value.
Memory (at the largest size, each operation in a fresh child process): the peak resident
memory the operation adds (Linux VmHWM, reset just before it via /proc/self/clear_refs),
divided by the value's resident size. dump ~0.0 means the value is streamed out without a
second copy; load ~1.0 means only the loaded value itself is allocated (2.0: held twice).
After the load the child touches the value and reports RSS again, split into anonymous memory
and file-backed pages. A lazy load is near 0 before touching; once touched, the mapped file's
pages count in RSS (RssFile). Those pages are the page cache's own copy of the file: they are
clean and the kernel can drop them (and re-read them) under memory pressure. They are not a
second copy the way pickle's anonymous copy next to the cached file is. A page only becomes
private anonymous memory when the step writes to it (copy-on-write).
"""

import argparse
import gc
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

MB = 1 << 20


# -- values ------------------------------------------------------------------------------------

def make_value(kind, mb):
    import numpy as np

    if kind == "array":
        return np.random.default_rng(0).random(int(mb * MB) // 8)
    if kind == "frame":
        import pandas as pd

        def frame(rows):
            rng = np.random.default_rng(0)
            return pd.DataFrame({
                "x": rng.random(rows), "y": rng.random(rows), "n": rng.integers(0, 1000, rows),
                "label": pd.array([f"item-{i % 5000}" for i in range(rows)], dtype="str"),
            })

        per_row = frame(10_000).memory_usage(deep=True).sum() / 10_000
        return frame(int(mb * MB / per_row))
    if kind == "dict":
        def entries(n):
            return {f"k{i}": {"id": i, "name": f"name-{i}", "score": i * 0.5, "tags": ["a", "b"]} for i in range(n)}

        per_entry = len(pickle.dumps(entries(10_000), protocol=5)) / 10_000
        return entries(int(mb * MB / per_entry))
    raise ValueError(kind)


# -- ways to write and read --------------------------------------------------------------------

def _pickle_dump(value, path):
    with open(path, "wb") as file:
        pickle.dump(value, file, protocol=5)


def _pickle_load(path):
    with open(path, "rb") as file:
        return pickle.load(file)


def _pickle_load_gc_paused(path):
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _pickle_load(path)
    finally:
        if enabled:
            gc.enable()


def _numpy_dump(value, path):
    import numpy as np

    with open(path, "wb") as file:
        np.save(file, value, allow_pickle=False)


def _numpy_load(path):
    import numpy as np

    return np.load(path, allow_pickle=False)


_RAW_SHAPE = {}


def _raw_dump(value, path):
    _RAW_SHAPE[path] = (value.shape, value.dtype)
    with open(path, "wb") as file:
        file.write(memoryview(value).cast("B"))


def _numpy_load_mmap(path):
    import numpy as np

    return np.load(path, allow_pickle=False, mmap_mode="c")


def _raw_load(path):
    import numpy as np

    shape, dtype = _RAW_SHAPE[path]
    out = np.empty(shape, dtype)
    with open(path, "rb", buffering=0) as file:
        file.readinto(memoryview(out).cast("B"))
    return out


def _serde():
    from kfmagic import serde

    return serde.dump, serde.load


_ALSO_SERDE = "KFMAGIC_BENCH_ALSO_SERDE"  # environment, so that the memory children see it too


def _other_serde(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("other_serde", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return f"serde[{os.path.basename(path)}]", module.dump, module.load


def ways(kind):
    """[(name, dump, load)], the baseline (pickle-p5) first."""
    serde_dump, serde_load = _serde()
    found = [("pickle-p5", _pickle_dump, _pickle_load), ("serde", serde_dump, serde_load)]
    if os.environ.get(_ALSO_SERDE):
        found.append(_other_serde(os.environ[_ALSO_SERDE]))
    if kind == "array":
        found += [("numpy.save", _numpy_dump, _numpy_load), ("numpy mmap=c", _numpy_dump, _numpy_load_mmap),
                  ("raw-bytes", _raw_dump, _raw_load)]
    if kind == "dict":
        found += [("pickle-p5, gc paused", _pickle_dump, _pickle_load_gc_paused)]
    return found


def touch(kind, value):
    """Read all of the value's data (a lazily loaded value reads its pages here)."""
    if kind == "array":
        return float(value.sum())
    if kind == "frame":
        return sum(float(value[name].sum()) for name in value.columns if value[name].dtype.kind in "fiu")
    return None  # dict: unpickling built every object already


# -- timing ------------------------------------------------------------------------------------

def _clock():
    return time.perf_counter(), time.process_time()


def _since(start):
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def _timed(fn):
    """(wall, cpu) seconds of fn()."""
    gc.collect()
    start = _clock()
    result = fn()
    elapsed = _since(start)
    del result
    return elapsed


def _timed_load(kind, load, path):
    """(wall, cpu) seconds of the bare load, then of touching the loaded value."""
    gc.collect()
    start = _clock()
    value = load(path)
    loaded = _since(start)
    start = _clock()
    touch(kind, value)
    touched = _since(start)
    del value
    return loaded, touched


def time_kind(kind, mb, repeats, scratch):
    """Dump and load times of every way, best of `repeats` rounds; the ways alternate within a round
    so that all of them see the same machine load."""
    value = make_value(kind, mb)
    found = ways(kind)
    paths = {name: os.path.join(scratch, f"{kind}-{mb:g}-{i}.bin") for i, (name, _, _) in enumerate(found)}
    for name, dump, _ in found:
        dump(value, paths[name])  # warm-up, and the file the loads read
    dumps, loads = {name: [] for name in paths}, {name: [] for name in paths}
    alone = []
    for _ in range(repeats):
        for name, dump, _ in found:
            dumps[name].append(_timed(lambda: dump(value, paths[name])))
        for name, _, load in found:
            loads[name].append(_timed_load(kind, load, paths[name]))
        alone.append(_timed(lambda: touch(kind, value)))
    best = lambda pairs, i: min(pair[i] for pair in pairs)  # noqa: E731
    rows = []
    for name in paths:
        rounds = loads[name]
        rows.append(dict(
            kind=kind, mb=mb, way=name, file_mb=os.path.getsize(paths[name]) / MB,
            dump_s=best(dumps[name], 0), dump_cpu_s=best(dumps[name], 1),
            load_s=min(r[0][0] for r in rounds), load_cpu_s=min(r[0][1] for r in rounds),
            load_touch_s=min(r[0][0] + r[1][0] for r in rounds), load_touch_cpu_s=min(r[0][1] + r[1][1] for r in rounds),
            touch_alone_s=best(alone, 0)))
    for path in paths.values():
        os.remove(path)
    base = rows[0]
    for row in rows:
        print(f"{kind:<6}{mb:>6g} MB  {row['way']:<22}{mb / row['dump_s']:>9.0f}{row['dump_s'] / base['dump_s']:>9.2f}"
              f"{mb / row['load_s']:>11.0f}{row['load_s'] / base['load_s']:>9.2f}"
              f"{mb / row['load_touch_s']:>12.0f}{row['load_touch_s'] / base['load_touch_s']:>9.2f}"
              f"{row['file_mb']:>9.1f}", flush=True)
    if kind != "dict":
        print(f"{kind:<6}{mb:>6g} MB  {'(touch alone)':<22}{'':>38}{mb / base['touch_alone_s']:>12.0f}", flush=True)
    return rows


# -- memory (child processes) ------------------------------------------------------------------

def _status(field):
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")


def child(op, kind, mb, way, path):
    """In a fresh process: the peak memory one dump or load adds, as JSON on stdout."""
    import numpy  # noqa: F401  imports are not part of the operation
    import pandas  # noqa: F401
    import cloudpickle  # noqa: F401
    try:
        import dill  # noqa: F401
    except ImportError:
        pass

    dump, load = {name: (d, l) for name, d, l in ways(kind)}[way]
    if op == "dump":
        gc.collect()
        before = _status("VmRSS")
        value = make_value(kind, mb)
        gc.collect()
        value_bytes = _status("VmRSS") - before
        if kind == "array":  # the array's pages are resident only once written: count its bytes
            value_bytes = max(value_bytes, value.nbytes)
        _reset_peak()
        start = _status("VmRSS")
        dump(value, path)
        out = dict(value_bytes=value_bytes, extra_peak=_status("VmHWM") - start)
    else:
        gc.collect()
        _reset_peak()
        start, start_file = _status("VmRSS"), _status("RssFile")
        value = load(path)
        gc.collect()
        out = dict(extra_peak=_status("VmHWM") - start, resident=_status("VmRSS") - start)
        touch(kind, value)
        gc.collect()
        out.update(touched_peak=_status("VmHWM") - start, touched=_status("VmRSS") - start,
                   touched_file=_status("RssFile") - start_file)
    del value
    print(json.dumps(out))


def memory_rows(kind, mb, scratch):
    rows = []
    for name, _, _ in ways(kind):
        if name in ("raw-bytes", "pickle-p5, gc paused", "numpy.save"):  # writer's process / as pickle-p5 / as mmap=c
            continue
        path = os.path.join(scratch, f"mem-{kind}.bin")

        def run(op):
            done = subprocess.run([sys.executable, __file__, "--child", op, kind, str(mb), name, path],
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            return json.loads(done.stdout.strip().splitlines()[-1])

        dumped = run("dump")
        loaded = run("load")
        os.remove(path)
        size = dumped["value_bytes"]
        row = dict(kind=kind, mb=mb, way=name, value_mb=size / MB, dump_extra=dumped["extra_peak"] / size,
                   load_peak=loaded["extra_peak"] / size, load_resident=loaded["resident"] / size,
                   touched_peak=loaded["touched_peak"] / size, touched_resident=loaded["touched"] / size,
                   touched_file=loaded["touched_file"] / size)
        rows.append(row)
        print(f"{kind:<6}{mb:>6g} MB  {name:<22}{row['value_mb']:>10.0f}{row['dump_extra']:>12.2f}"
              f"{row['load_peak']:>12.2f}{row['load_resident']:>12.2f}{row['touched_peak']:>14.2f}"
              f"{row['touched_resident']:>14.2f}{row['touched_file']:>12.2f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100", help="MB for the array and the DataFrame (default 10,100)")
    parser.add_argument("--dict-sizes", default="1,10",
                        help="pickled MB for the dict of small objects (default 1,10: building and loading "
                             "millions of objects is slow)")
    parser.add_argument("--kinds", default="array,frame,dict", help="which values (default array,frame,dict)")
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds; the best is reported (default 4)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--also-serde", metavar="FILE",
                        help="also time this serde.py (e.g. the previous one: git show REV:kfmagic/serde.py > FILE)")
    parser.add_argument("--child", nargs=5, metavar=("OP", "KIND", "MB", "WAY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        op, kind, mb, way, path = args.child
        return child(op, kind, float(mb), way, path)
    if args.also_serde:
        os.environ[_ALSO_SERDE] = os.path.abspath(args.also_serde)

    import numpy
    import pandas

    kinds = args.kinds.split(",")
    sizes = {kind: [float(s) for s in (args.dict_sizes if kind == "dict" else args.sizes).split(",")] for kind in kinds}
    scratch = tempfile.mkdtemp(prefix="kfmagic-marshal-")
    print(f"marshalling: python {sys.version.split()[0]}, numpy {numpy.__version__}, pandas {pandas.__version__}, "
          f"{os.cpu_count()} CPUs, best of {args.repeats}; files in {scratch} (page cache, not the disk)")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("MB/s = SIZE / best seconds; 'x pickle' = time relative to pickle-p5 (>1 is slower)")
    print("load* = the bare load: for serde (out-of-band buffers) and numpy mmap=c it only MAPS the file;")
    print("load+touch also reads every value (arr.sum(), sum of each numeric column): compare that one")
    print(f"{'value':<16}{'way':<22}{'dump MB/s':>9}{'x pickle':>9}{'load* MB/s':>11}{'x pickle':>9}"
          f"{'load+touch':>12}{'x pickle':>9}{'file MB':>9}")
    rows = []
    for kind in kinds:
        for mb in sizes[kind]:
            rows += time_kind(kind, mb, args.repeats, scratch)
    mem = []
    if not args.no_memory:
        try:
            _reset_peak()
        except OSError as error:
            print(f"memory: skipped, cannot reset the peak RSS ({error})")
        else:
            print("\npeak memory an operation adds / the value's resident size (fresh process each; largest size)")
            print("after touch: peak and RSS once every value was read; 'of it file' = the RssFile part (mapped")
            print("file pages: the page cache's copy, clean, reclaimable; anonymous only once written)")
            print(f"{'value':<16}{'way':<22}{'value MB':>10}{'dump extra':>12}{'load peak':>12}{'load kept':>12}"
                  f"{'touched peak':>14}{'touched kept':>14}{'of it file':>12}")
            for kind in kinds:
                mem += memory_rows(kind, max(sizes[kind]), scratch)
    with open(os.path.join(scratch, "marshalling.json"), "w") as file:
        json.dump({"timing": rows, "memory": mem}, file, indent=1)
    print(f"figures also in {os.path.join(scratch, 'marshalling.json')}")


if __name__ == "__main__":
    main()
