"""Submitting to Kubeflow Pipelines: the real kfp.Client against tests/kfp_server.py, which runs what it gets."""

import io
import os
import pickle
import re
import socket
import threading
import time

import pytest

from kfmagic import config
from kfmagic.config import KfpConnectionError
from kfmagic.display import TextProgress
from kfmagic.errors import KfmagicError, RunFailed
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


def test_wait_gives_up_in_time_then_ends_on_cancel_and_status_reads_any_run(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of("%%step sleepy --no-install\nimport time\ntime.sleep(120)")
    pipeline.configure(host=kfp_server.url)
    run = pipeline.run()
    deadline = time.time() + 30
    while run.refresh().steps["sleepy"].state != "RUNNING" and time.time() < deadline:
        time.sleep(0.2)
    guard = threading.Timer(15, lambda: run.client.terminate_run(run.id))  # a wait that ignores its timeout ends
    guard.start()
    started = time.time()
    with pytest.raises(KfmagicError, match=f"^Run {run.id} is still RUNNING after 1s: {re.escape(run.url)}$"):
        run.wait(timeout=1, progress=TextProgress(io.StringIO()), interval=0.2)
    assert time.time() - started < 5
    guard.cancel()
    assert run.state == "RUNNING" and kfp_server.get_run(run.id)["state"] == "RUNNING"  # giving up stops nothing
    threading.Timer(0.5, lambda: run.client.terminate_run(run.id)).start()
    started = time.time()
    run.wait(progress=TextProgress(io.StringIO()), interval=0.2)
    assert run.state == "CANCELED" and time.time() - started < 20
    assert run.steps["sleepy"].state == "CANCELED"
    other = Pipeline()
    other.configure(host=kfp_server.url)
    fetched = other.status(run.id)
    assert fetched.state == "CANCELED" and fetched.url.endswith(run.id)


def test_a_failing_step_fails_the_submitted_run_and_its_descendants_never_start(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of(
        "%%step first --no-install\nx = 1",
        "%%step boom --no-install\nvalue = x + 41\nraise ValueError(f'bad value {value}')",
        "%%step after --no-install --after boom\ny = 2",
        "%%step later --no-install\nz = y + 1",
    )
    pipeline.configure(host=kfp_server.url)
    printed = io.StringIO()
    with pytest.raises(RunFailed) as failure:
        pipeline.run(wait=True, progress=TextProgress(printed))
    run = failure.value.run
    assert run is pipeline.last_run and run.runner == "kfp" and run.state == "FAILED"
    assert {name: step.state for name, step in run.steps.items()} == {
        "first": "SUCCEEDED", "boom": "FAILED", "after": "SKIPPED", "later": "SKIPPED",
    }
    assert run.steps["boom"].error == "task boom failed; see server.run_log()"  # the API's task error, as sent
    url = f"{kfp_server.url}/#/runs/details/{run.id}"
    assert str(failure.value).splitlines() == [
        f"Run {run.id} FAILED.",
        "Step 'boom' failed: task boom failed; see server.run_log()",
        "Not run: after, later.",
        f"Outputs of finished steps are kept in {run.run_dir}.",
        f"On Kubeflow: {url}",
    ]
    # the cluster never started them: no task of theirs exists there; the kernel calls them skipped
    reported = {task["display_name"]: task["state"] for task in kfp_server.get_run(run.id)["run_details"]["task_details"]}
    assert reported == {"kfmagic runtime": "SUCCEEDED", "first": "SUCCEEDED", "boom": "FAILED"}
    assert "[after] skipped" in printed.getvalue() and "[later] skipped" in printed.getvalue()
    assert "ValueError: bad value 42" in kfp_server.run_log(run.id)  # the step really ran and raised


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
    monkeypatch.setattr(config, "REQUEST_TIMEOUT", (1, 2))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        pipeline = pipeline_of("%%step only\nx = 1")
        pipeline.configure(host=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.time()
        with pytest.raises(KfpConnectionError, match="did not answer in time while connecting"):
            pipeline.run()
        assert time.time() - started < 5  # one unanswered health request, not retried


def test_a_request_that_stalls_after_the_health_check_times_out(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "REQUEST_TIMEOUT", (1, 2))
    pipeline = pipeline_of("%%step only --no-install\nx = 1")
    pipeline.configure(host=kfp_server.url)
    kfp_server.stall_next(r"/pipelines/upload$", method="POST")
    started = time.time()
    with pytest.raises(KfpConnectionError) as error:
        pipeline.run()
    assert time.time() - started < 5
    assert str(error.value) == (
        f"Kubeflow Pipelines at {kfp_server.url} did not answer in time while uploading pipeline 'sub'. Check that "
        "the cluster is up and the address is right (a port-forward that died looks like this), then try again."
    )
    answered = [(method, path.rsplit("/", 1)[-1]) for method, path, _ in kfp_server.requests]
    assert answered[0] == ("GET", "healthz") and kfp_server.request_details[0]["status"] == 200
    assert kfp_server.stalled == 1

    run = pipeline.run()  # the server answers again
    kfp_server.stall_next(rf"/runs/{run.id}$", method="GET", times=None)
    started = time.time()
    with pytest.raises(KfpConnectionError, match=f"did not answer in time while reading run {run.id}\\."):
        run.refresh()
    assert time.time() - started < 5  # a GET that timed out is not retried (it would take 4 x 2 s)
    with pytest.raises(KfpConnectionError, match=f"did not answer in time while reading run {run.id}\\."):
        pipeline.status()
    kfp_server.clear_failures()
    assert kfp_server.wait_for_run(run.id)["state"] == "SUCCEEDED" and run.refresh().state == "SUCCEEDED"


def test_namespace_reaches_the_experiment_and_the_run(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of("%%step only --no-install\nx = 1")
    pipeline.configure(host=kfp_server.url, namespace="team-ns", experiment="ns-exp")
    run = pipeline.run()
    assert [(e["display_name"], e["namespace"]) for e in kfp_server.experiments.values()] == [("ns-exp", "team-ns")]
    assert kfp_server.runs[run.id].namespace == "team-ns"
    assert ("GET", "/apis/v2beta1/healthz") in [(method, path) for method, path, _ in kfp_server.requests]


def test_the_experiment_is_configs_else_inits_else_default(run_cells, kfp_server):
    submitted = "run = %pipeline run\nprint(run.id)"
    out = run_cells([
        "%load_ext kfmagic\n%pipeline init order --experiment from-init",
        "%%step only --no-install\nx = 1",
        f"%pipeline config --host {kfp_server.url}",
        submitted,
        f"%pipeline config --host {kfp_server.url} --experiment from-config",
        submitted,
        "%pipeline init order --experiment other-init",  # init again: config's experiment still wins
        submitted,
        f"%pipeline init order\n%pipeline config --host {kfp_server.url}",
        submitted,
    ])
    run_ids = [out[i].strip().splitlines()[-1] for i in (3, 5, 7, 9)]
    experiment_of = {e["experiment_id"]: e["display_name"] for e in kfp_server.experiments.values()}
    assert [experiment_of[kfp_server.runs[run_id].experiment_id] for run_id in run_ids] == [
        "from-init", "from-config", "from-config", "Default",
    ]
    assert f"Submitted run {run_ids[0]} of pipeline 'order' (experiment 'from-init')" in out[3]
    assert len(kfp_server.pipelines) == 1 and len(kfp_server.versions) == 4  # one version each, within a second too


def _headers_sent(kfp_server, connection):
    """The headers of one API request made with the kfp.Client `connection` builds."""
    connection.client().list_experiments()
    method, path, headers = kfp_server.requests[-1]
    assert (method, path) == ("GET", "/apis/v2beta1/experiments")
    return headers


def test_each_kind_of_credentials_reaches_the_server_and_never_shows(kfp_server, tmp_path, monkeypatch):
    pipeline = Pipeline()
    kfp_server.require_token = TOKEN
    headers = _headers_sent(kfp_server, pipeline.configure(host=kfp_server.url, token=TOKEN))
    assert headers["Authorization"] == f"Bearer {TOKEN}" and "Cookie" not in headers

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    connection = pipeline.configure(host=kfp_server.url, token_path=str(token_file))
    client = connection.client()
    client.list_experiments()
    assert kfp_server.requests[-1][2]["Authorization"] == f"Bearer {TOKEN}"
    token_file.write_text("rotated-token")  # a service account's token is re-read on every request
    kfp_server.require_token = "rotated-token"
    client.list_experiments()
    assert kfp_server.requests[-1][2]["Authorization"] == "Bearer rotated-token"

    kfp_server.require_token = None
    monkeypatch.setenv(config.TOKEN_PATH_ENV, str(token_file))  # given cookies, the environment's token is not sent
    headers = _headers_sent(kfp_server, pipeline.configure(host=kfp_server.url, cookies="authservice_session=abc123"))
    assert headers["Cookie"] == "authservice_session=abc123" and "Authorization" not in headers

    for connection in (pipeline.configure(host="http://kfp.example", token=TOKEN),
                       pipeline.configure(host="http://kfp.example", cookies="authservice_session=abc123")):
        shown = repr(connection) + repr(pipeline) + connection.describe()
        assert TOKEN not in shown and "abc123" not in shown


@pytest.mark.parametrize("given, message", [
    ({"token": "t", "cookies": "c"}, "Give one of --token, --token-path, --cookies (got token, cookies)."),
    ({"token": "t", "token_path": "/etc/hostname"}, "Give one of --token, --token-path, --cookies (got token, token_path)."),
    ({"token_path": "/no/such/token"}, "--token-path /no/such/token: no such file."),
])
def test_conflicting_or_missing_credentials_are_one_message(given, message):
    with pytest.raises(KfmagicError) as error:
        Pipeline().configure(host="http://kfp.example", **given)
    assert type(error.value) is KfmagicError and str(error.value) == message


def test_no_cache_reaches_the_cluster_in_the_uploaded_pipeline(kfp_server, tmp_path, monkeypatch):
    """kfp.Client drops enable_caching for a run of an uploaded version: --no-cache is compiled in."""
    import yaml

    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of("%%step a --no-install\nx = 1", "%%step b --no-install --cache\ny = x + 1")
    pipeline.configure(host=kfp_server.url)
    for cache, expected in ((True, {True}), (False, {False})):
        run = pipeline.run(cache=cache, wait=True, progress=TextProgress(io.StringIO()))
        spec = yaml.safe_load(open(os.path.join(run.run_dir, "pipeline.yaml")))
        assert {task["cachingOptions"].get("enableCache", False) for task in spec["root"]["dag"]["tasks"].values()} == expected


def test_a_submission_warns_of_what_a_pod_cannot_do(kfp_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("1\n")
    pipeline = pipeline_of("%%step read --no-install\ntext = open('data.csv').read()")
    pipeline.configure(host=kfp_server.url)
    pipeline.run(progress=TextProgress(io.StringIO()))
    assert "warning: Step 'read' opens 'data.csv', a path relative to the notebook's folder" in capsys.readouterr().err
