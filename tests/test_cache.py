"""The cache and resume: what did not change is not run again, what changed is, and reused values are
links to the earlier run's files, never copies."""

import io
import json
import os
import subprocess

import nbformat
import pytest
from conftest import make_notebook

from kfmagic.display import TextProgress
from kfmagic.errors import KfmagicError, RunFailed
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

CHAIN = [
    "%%params\nrate = 2",
    "%%step load --outputs loaded_at\nimport time\nitems = list(range(5))\nloaded_at = time.time()",
    "%%step scale\nscaled = [v * rate for v in items]",
    "%%step total --metrics total\ntotal = sum(scaled)",
    "%%step side\nside = len(items)",
]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pipeline_of(*cells, name="cached"):
    pipeline = Pipeline(name=name)
    for number, text in enumerate(cells):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    return pipeline


def run(pipeline, **kwargs):
    printed = io.StringIO()
    try:
        result = pipeline.run(progress=TextProgress(printed), **kwargs)
    except RunFailed as failure:
        result = failure.run
    result.printed = printed.getvalue()
    return result


def ran(result):
    """The steps that really ran (not reused)."""
    return sorted(name for name, step in result.steps.items() if step.state == "SUCCEEDED" and not step.cached_from)


def test_an_unchanged_rerun_reuses_every_step_by_link(here):
    pipeline = pipeline_of(*CHAIN)
    first = run(pipeline)
    again = run(pipeline)
    assert ran(first) == ["load", "scale", "side", "total"] and ran(again) == []
    assert again.state == "SUCCEEDED" and again.metrics == first.metrics == {"total": {"total": 20.0}}
    assert again.load("loaded_at") == first.load("loaded_at")  # reused, not recomputed
    assert "[load] cached" in again.printed and "load   cached" in again.printed
    old, new = first.steps["scale"].saved["scaled"]["path"], again.steps["scale"].saved["scaled"]["path"]
    assert old != new and os.stat(old).st_ino == os.stat(new).st_ino  # a hard link, not a copy


def test_what_changed_runs_again_and_only_what_it_reaches(here):
    pipeline = pipeline_of(*CHAIN)
    run(pipeline)
    edited = pipeline_of(*CHAIN[:2], "%%step scale\nscaled = [v * rate + 1 for v in items]", *CHAIN[3:])
    assert ran(run(edited)) == ["scale", "total"]
    assert ran(run(pipeline, params={"rate": "3"})) == ["scale", "total"]  # a parameter it reads
    comment = pipeline_of(*CHAIN[:2], "%%step scale\nscaled = [v * rate for v in items]  # same", *CHAIN[3:])
    same_values = run(comment)
    assert ran(same_values) == ["scale"]  # its value is the same: what reads it is reused


def test_no_cache_runs_everything_and_a_step_option_keeps_one_step_running(here):
    pipeline = pipeline_of(*CHAIN)
    run(pipeline)
    assert ran(run(pipeline, cache=False)) == ["load", "scale", "side", "total"]
    always = pipeline_of(CHAIN[0], CHAIN[1].replace("%%step load", "%%step load --no-cache"), *CHAIN[2:])
    first = run(always)
    again = run(always)
    assert ran(again) == ["load"]  # what reads it got the same items: reused by content
    assert again.load("loaded_at") != first.load("loaded_at")


def test_editing_a_local_module_or_a_module_of_a_local_package_runs_what_imports_it_again(here):
    (here / "helpers.py").write_text("FACTOR = 2\n")
    pipeline = pipeline_of("%%step a\nimport helpers\nx = helpers.FACTOR")
    run(pipeline)
    assert ran(run(pipeline)) == []
    (here / "helpers.py").write_text("FACTOR = 3\n")
    result = run(pipeline)
    assert ran(result) == ["a"] and result.load("x") == 3
    (here / "pkg").mkdir()
    (here / "pkg" / "__init__.py").write_text("")
    (here / "pkg" / "mod.py").write_text("VALUE = 1\n")
    from_package = pipeline_of("%%step b\nfrom pkg.mod import VALUE\ny = VALUE")
    assert run(from_package).load("y") == 1
    (here / "pkg" / "mod.py").write_text("VALUE = 2\n")  # a module inside the package, not its __init__
    result = run(from_package)
    assert ran(result) == ["b"] and result.load("y") == 2


def test_upgrading_a_package_a_step_imports_runs_it_again_in_the_same_kernel(here, monkeypatch):
    import shutil

    site = here / "site"

    def install(version):  # what pip leaves: the module and its distribution's .dist-info
        for old in site.glob("fakedist-*.dist-info"):
            shutil.rmtree(old)
        info = site / f"fakedist-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakedist\nVersion: {version}\n")
        (info / "top_level.txt").write_text("fakemod\n")
        (site / "fakemod.py").write_text(f"VERSION = {version!r}\n")

    install("1.0")
    monkeypatch.syspath_prepend(str(site))  # the kernel finds the distribution, the steps the module
    monkeypatch.setenv("PYTHONPATH", str(site))
    pipeline = pipeline_of("%%step a\nimport fakemod\nx = fakemod.VERSION")
    assert run(pipeline).load("x") == "1.0" and ran(run(pipeline)) == []
    install("2.0")  # !pip install -U fakedist, in the same kernel
    upgraded = run(pipeline)
    assert ran(upgraded) == ["a"] and upgraded.load("x") == "2.0"


def test_which_distribution_provides_a_module_is_looked_up_once_for_the_processes_after_it(here, monkeypatch):
    # Building importlib.metadata's map takes ~0.1 s, and each `kfmagic run` is a new process.
    import importlib.metadata

    from kfmagic import packages

    built = []
    real = importlib.metadata.packages_distributions
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: built.append(1) or real())
    kept = here / ".kfmagic" / "cache" / "packages.json"

    def requirements_in_a_new_process():
        packages._providers.cache_clear()
        return packages.requirements(["numpy", "pytest"], kept_in=str(kept))

    first = requirements_in_a_new_process()
    assert any(pin.startswith("numpy==") for pin in first[0]) and len(built) == 1
    assert requirements_in_a_new_process() == first and len(built) == 1 and oct(kept.stat().st_mode & 0o777) == "0o600"
    stamp = json.dumps(packages._installed_stamp())
    for damaged in ("{not json", f'{{"stamp": {stamp}, "providers": {{"numpy": "numpy"}}}}', "[]"):
        kept.write_text(damaged)
        assert requirements_in_a_new_process() == first  # built again, as if there were none
    assert len(built) == 4 and requirements_in_a_new_process() == first and len(built) == 4
    monkeypatch.setattr(packages, "_installed_stamp", lambda: (("/an/other/site-packages", 1),))  # pip installed something
    assert requirements_in_a_new_process() == first and len(built) == 5


def test_a_pruned_run_is_not_reused(here):
    import shutil

    pipeline = pipeline_of(*CHAIN)
    first = run(pipeline)
    shutil.rmtree(first.run_dir)
    assert ran(run(pipeline)) == ["load", "scale", "side", "total"]


def test_from_runs_the_step_and_what_follows_and_reuses_the_rest_from_the_last_run(here):
    pipeline = pipeline_of(*CHAIN)
    first = run(pipeline)
    resumed = run(pipeline, start_from="scale")
    assert ran(resumed) == ["scale", "total"]  # even though the cache has them
    assert resumed.steps["load"].cached_from == first.id and resumed.load("loaded_at") == first.load("loaded_at")
    with pytest.raises(KfmagicError, match="--from scael: no such step. Did you mean 'scale'"):
        pipeline.run(start_from="scael")


def test_a_failed_run_offers_to_resume_from_the_failed_step_which_then_works(here):
    broken = pipeline_of(*CHAIN[:2], "%%step scale\nscaled = [v / 0 for v in items]", *CHAIN[3:])
    failed = run(broken)
    assert failed.state == "FAILED"
    with pytest.raises(RunFailed, match="Resume from the failed step with `--from scale`"):
        broken.run(progress=TextProgress(io.StringIO()), cache=False)
    with pytest.raises(KfmagicError, match="has nothing to reuse of step\\(s\\) 'scale' \\(failed\\)"):
        broken.run(start_from="total")
    fixed = pipeline_of(*CHAIN)
    fixed.last_run = broken.last_run
    resumed = run(fixed, start_from="scale")
    assert resumed.state == "SUCCEEDED" and ran(resumed) == ["scale", "total"]


def test_the_cli_resumes_the_last_run_on_disk(here):
    path = here / "nb.ipynb"
    nbformat.write(make_notebook(["%load_ext kfmagic", *CHAIN]), path)
    first = subprocess.run(["kfmagic", "run", str(path)], capture_output=True, text=True, timeout=120)
    again = subprocess.run(["kfmagic", "run", str(path), "--from", "total"], capture_output=True, text=True, timeout=120)
    assert first.returncode == again.returncode == 0, again.stderr
    assert "[load] cached" in again.stdout and "[total] done" in again.stdout and "total=20" in again.stdout
