"""Submitting to Kubeflow Pipelines: the real kfp.Client against tests/kfp_server.py, which runs what it gets."""

import os
import pickle
import socket
import threading
import time

import pytest

from kfmagic import config
from kfmagic.config import KfpConnectionError
from kfmagic.display import TextProgress
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

TOKEN = "s3cr3t-token-7f1d"


def pipeline_of(*cells, name="sub"):
    pipeline = Pipeline().init(name, experiment="exp")
    for number, text in enumerate(cells):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    return pipeline


def every_text_under(root):
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as file:
                yield os.path.join(folder, name), file.read().decode("utf-8", "replace")


def test_kernel_submits_waits_and_resubmits_as_a_new_version(run_cells, kfp_server, tmp_path):
    kfp_server.require_token = TOKEN
    out = run_cells([
        "%load_ext kfmagic\n%pipeline init shipped --experiment team",
        "%%params\nscale = 2",
        "%%step make\nitems = [1, 2, 3]",
        "%%step scaled --metrics total\nscaled = [x * scale for x in items]\ntotal = sum(scaled)",
        f"%pipeline config --host {kfp_server.url} --token {TOKEN}",
        "run = %pipeline run --wait --param scale=5",
        "print(run.runner, run.state, {s.name: s.state for s in run.steps.values()}, run.url)",
        "again = %pipeline run",
        "again.wait()\nprint(again.state)\n%pipeline status",
        "print(kfmagic_pipeline_repr := repr(__import__('kfmagic').pipeline()))",
    ])
    assert "%pipeline run submits to Kubeflow Pipelines at http://127.0.0.1" in out[4] and "(token)" in out[4]
    run_id = out[6].split()[-1].rsplit("/", 1)[-1]
    assert f"Submitted run {run_id} of pipeline 'shipped' (experiment 'team')" in out[5]
    assert f"run {run_id} (kfp): done" in out[5] and "scaled  done" in out[5]  # live table, final state
    assert out[6].startswith("kfp SUCCEEDED {'make': 'SUCCEEDED', 'scaled': 'SUCCEEDED'}")
    assert out[6].split()[-1] == f"{kfp_server.url}/#/runs/details/{run_id}"
    # the run really ran, with the overridden parameter, and its values are the variables' artifacts
    with open(kfp_server.artifact_path(run_id, "scaled", "scaled"), "rb") as file:
        assert pickle.load(file) == [5, 10, 15]
    assert kfp_server.get_run(run_id)["runtime_config"]["parameters"] == {"scale": 5}
    # second submission: a new version of the same pipeline, the same experiment
    assert len(kfp_server.pipelines) == 1 and len(kfp_server.versions) == 2
    assert [e["display_name"] for e in kfp_server.experiments.values()] == ["team"]
    assert "SUCCEEDED" in out[8] and "(kfp): done" in out[8]
    # every request carried the token; it shows up nowhere else
    assert all(headers.get("Authorization") == f"Bearer {TOKEN}" for _, path, headers in kfp_server.requests
               if "healthz" not in path)
    assert not any(TOKEN in text for text in out)
    assert not [path for path, text in every_text_under(tmp_path / ".kfmagic") if TOKEN in text]
    assert not [path for path, text in every_text_under(kfp_server.root) if TOKEN in text]


def test_runner_defaults_to_kubeflow_when_the_endpoint_is_in_the_environment(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_server.url)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    kfp_server.require_token = TOKEN
    run = pipeline_of("%%step only\nx = 1").run()
    assert run.runner == "kfp" and run.state in ("PENDING", "RUNNING", "SUCCEEDED")
    assert kfp_server.wait_for_run(run.id)["state"] == "SUCCEEDED"
    assert run.refresh().state == "SUCCEEDED" and run.steps["only"].state == "SUCCEEDED"
    assert pipeline_of("%%step only\nx = 1").run(runner="local").runner == "local"  # --local still runs here


def test_wait_ends_on_cancel_and_status_reads_any_run(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of("%%step sleepy --no-install\nimport time\ntime.sleep(120)")
    pipeline.configure(host=kfp_server.url)
    run = pipeline.run()
    deadline = time.time() + 30
    while run.refresh().steps["sleepy"].state != "RUNNING" and time.time() < deadline:
        time.sleep(0.2)
    threading.Timer(0.5, lambda: run.client.terminate_run(run.id)).start()
    started = time.time()
    run.wait(progress=TextProgress(), interval=0.2)
    assert run.state == "CANCELED" and time.time() - started < 20
    assert run.steps["sleepy"].state == "CANCELED"
    other = Pipeline()
    other.configure(host=kfp_server.url)
    fetched = other.status(run.id)
    assert fetched.state == "CANCELED" and fetched.url.endswith(run.id)


def _refusing_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_errors_say_what_to_do(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of("%%step only --no-install\nx = 1")

    pipeline.configure(host=f"http://127.0.0.1:{_refusing_port()}")
    with pytest.raises(KfpConnectionError, match="Cannot reach Kubeflow Pipelines at http://127.0.0.1:.*--host"):
        pipeline.run()

    kfp_server.require_token = TOKEN
    pipeline.configure(host=kfp_server.url, token="wrong-token")
    with pytest.raises(KfpConnectionError, match=r"refused uploading pipeline 'sub' \(HTTP 401\).*--token") as error:
        pipeline.run()
    assert "wrong-token" not in str(error.value)
    kfp_server.require_token = None

    pipeline.configure(host=kfp_server.url)
    kfp_server.fail_next(r"/pipelines/upload", 400, {"error": "bad spec", "message": "pipeline spec is invalid: no root"})
    with pytest.raises(KfpConnectionError, match="rejected uploading pipeline 'sub' \\(HTTP 400\\): pipeline spec is invalid"):
        pipeline.run()
    kfp_server.fail_next(r"/experiments", 503, method="GET")
    with pytest.raises(KfpConnectionError, match="HTTP 503, a server error.*Try again"):
        pipeline.run()
    kfp_server.fail_next(r"/runs$", 403, method="POST")
    with pytest.raises(KfpConnectionError, match="refused creating the run \\(HTTP 403\\).*lack access"):
        pipeline.run()
    with pytest.raises(KfpConnectionError, match="not found while reading run nope \\(HTTP 404\\)"):
        pipeline.status("nope")


def test_a_server_that_never_answers_times_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "REQUEST_TIMEOUT", (1, 1))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        pipeline = pipeline_of("%%step only\nx = 1")
        pipeline.configure(host=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.time()
        with pytest.raises(KfpConnectionError, match="did not answer in time"):
            pipeline.run()
        assert time.time() - started < 15


def test_credentials_never_show(tmp_path):
    pipeline = Pipeline()
    connection = pipeline.configure(host="http://kfp.example", cookies="authservice_session=abc123")
    assert "abc123" not in repr(connection) and "abc123" not in repr(pipeline) and "cookies" in connection.describe()
    with pytest.raises(Exception, match="give one of --token, --token-path, --cookies"):
        pipeline.configure(host="http://kfp.example", token="t", cookies="c")
