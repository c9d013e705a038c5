"""Parallel by default: every ready step starts, however few cores there are; --workers limits."""

import io

from kfmagic.display import TextProgress
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

WAITS = [*(f"%%step wait{i}\nimport time\ntime.sleep(1)\nw{i} = {i}" for i in range(6)),
         "%%step join\ntotal = w0 + w1 + w2 + w3 + w4 + w5"]


def run(tmp_path, monkeypatch, **kwargs):
    monkeypatch.chdir(tmp_path)
    pipeline = Pipeline(name="waits")
    for text in WAITS:
        pipeline.add(parse_cell(text))
    return pipeline.run(progress=TextProgress(io.StringIO()), cache=False, **kwargs)


def most_at_once(result):
    """The most steps that were running at one moment."""
    spans = [(step.started, step.finished) for name, step in result.steps.items() if name != "join"]
    return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)


def test_every_ready_step_starts_at_once_by_default(tmp_path, monkeypatch):
    result = run(tmp_path, monkeypatch)
    assert result.load("total") == 15
    assert most_at_once(result) == 6  # on any number of cores: waiting steps overlap


def test_workers_limits_how_many_run_at_once(tmp_path, monkeypatch):
    assert most_at_once(run(tmp_path, monkeypatch, workers=2)) == 2
