"""The run store: a cluster run's results, metrics, values and logs come back to the notebook.

No Kubernetes can run here, so the cluster is tests/kfp_server.py's stand-in: a loopback server
speaking the KFP REST API to the real kfp.Client, which runs the submitted IR with kfp.local; its
steps' processes play the pods. The object storage is real S3 over HTTP: moto's server mode
started on 127.0.0.1 by each test. The steps write to it through fsspec/s3fs, and the kernel (a
real ipykernel) reads back through the same client, with the standard credentials (AWS_*) in the
environment of both, as a cluster's pods would get them from a secret.
"""

import io
import json
import os
import stat
import subprocess
import sys
import time
import types

import pytest

from conftest import cell_text, execute, make_notebook
from kfmagic.display import TextProgress
from kfmagic.errors import KfmagicError, RunFailed
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell

TOKEN = "kfp-token-3e9a51"
ACCESS_KEY = "KFMAGICTESTKEY"
SECRET = "store-secret-d41c8e2b7f"
BUCKET = "kfm-runs"


@pytest.fixture
def s3(monkeypatch):
    """An S3-compatible server on 127.0.0.1 (moto's server mode) with one bucket, its address and
    credentials in the standard environment variables (inherited by kernels and by the stand-in's pods)."""
    pytest.importorskip("s3fs", reason="the run store's S3 backend (pip install 'kfmagic[store]')")
    moto_server = pytest.importorskip("moto.server", reason="an S3 server to test against (pip install 'moto[server]')")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET),
                        ("AWS_ENDPOINT_URL", f"http://{host}:{port}"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield types.SimpleNamespace(url=f"s3://{BUCKET}/notebooks", client=client)
    server.stop()


def objects(s3):
    """{key: bytes} of everything in the bucket."""
    listed = s3.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {item["Key"]: s3.client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listed}


def texts_under(root):
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as file:
                yield os.path.join(folder, name), file.read()


def pipeline_of(*cells, name="stored"):
    pipeline = Pipeline().init(name)
    for number, text in enumerate(cells):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    return pipeline


def test_a_cluster_run_comes_back_to_the_kernel_and_to_a_second_one(s3, kfp_server, tmp_path):
    """Submitted from one kernel with a store: run.metrics, run.load and %pipeline logs read what the
    steps' pods wrote to S3; a second kernel in another folder opens the run by its Kubeflow id. The
    token and the store's secret appear in no output, compiled YAML, run.json, log or stored object."""
    kfp_server.require_token = TOKEN
    out = [cell_text(cell) for cell in execute(make_notebook([
        "%load_ext kfmagic\n%pipeline init stored",
        "%%params\nscale = 2",
        "%%step make --no-install\nitems = [1, 2, 3]\nprint('made', len(items), 'items')",
        "%%step scaled --no-install --metrics total\nimport sys\nscaled = [x * scale for x in items]\n"
        "total = sum(scaled)\nprint('total is', total)\nprint('a warning line', file=sys.stderr)\n!echo from-a-shell",
        f"%pipeline config --host {kfp_server.url} --token {TOKEN} --store {s3.url}",
        "run = %pipeline run --wait --param scale=5",
        "print(run.metrics, run.load('scaled'), run.load('items'))\nprint(run.id)",
        "%pipeline logs scaled",
    ]), tmp_path).cells]
    assert f"runs keep their records in {s3.url}" in out[4]
    assert "[make] made 3 items" in out[5] and "[scaled] total is 30" in out[5]  # the steps' output, shown as they end
    assert out[6].splitlines()[0] == "{'scaled': {'total': 30.0}} [5, 10, 15] [1, 2, 3]"
    kfp_id = out[6].splitlines()[1]
    logged = out[7].splitlines()  # stdout's lines in order; stderr's pipe is read beside it, so its line may come first
    assert sorted(logged) == ["a warning line", "from-a-shell", "total is 30"]
    assert [line for line in logged if line != "a warning line"] == ["total is 30", "from-a-shell"]
    # kfmagic's id of the run is a parameter of the run and names its folders here and in the store
    submission = kfp_server.get_run(kfp_id)["runtime_config"]["parameters"]
    assert submission["scale"] == 5 and submission["kfmagic_store"] == f"{s3.url}/stored"
    kfmagic_id = submission["kfmagic_run_id"]
    info = json.loads((tmp_path / ".kfmagic" / "runs" / kfmagic_id / "run.json").read_text())
    assert (info["id"], info["kfmagic_run_id"], info["store"]) == (kfp_id, kfmagic_id, f"{s3.url}/stored/{kfmagic_id}")
    stored = objects(s3)
    prefix = f"notebooks/stored/{kfmagic_id}"
    assert {f"{prefix}/make/outputs/items.pkl", f"{prefix}/scaled/outputs/scaled.pkl", f"{prefix}/scaled/log.txt",
            f"{prefix}/scaled/result.json", f"{prefix}/steps.json"} <= set(stored)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = [cell_text(cell) for cell in execute(make_notebook([
        f"import kfmagic\n%load_ext kfmagic\n%pipeline config --host {kfp_server.url} --token {TOKEN}",
        f"run = kfmagic.open_run({kfp_id!r})\nprint(run.state, list(run.steps), run.metrics)\n"
        "print(run.load('items', step='make'), run.load('scaled'))",
        f"%pipeline logs make {kfp_id}",
    ]), elsewhere).cells]
    assert again[1].splitlines() == [
        "SUCCEEDED ['make', 'scaled'] {'scaled': {'total': 30.0}}", "[1, 2, 3] [5, 10, 15]",
    ]
    assert again[2] == "made 3 items\n"
    downloaded = elsewhere / ".kfmagic" / "runs" / kfmagic_id
    for folder, folders, files in os.walk(downloaded):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert all(stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600 for name in files)
    assert (downloaded / "make" / "outputs" / "items.pkl").is_file()

    everything = [text.encode() for text in out + again] + list(stored.values())
    everything += [data for _, data in texts_under(tmp_path / ".kfmagic")]
    everything += [data for _, data in texts_under(elsewhere / ".kfmagic")]
    everything += [data for _, data in texts_under(kfp_server.root)]
    for secret in (TOKEN.encode(), SECRET.encode()):
        assert not [data for data in everything if secret in data]


def test_a_failed_step_s_error_and_log_come_from_the_store_and_finished_values_load(s3, kfp_server, tmp_path, monkeypatch):
    """The stand-in cluster runs the steps (kfp.local, no Kubernetes here); the kernel reads the failed
    step's own traceback (not the API's one-line task error) and its log from S3."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KFMAGIC_STORE", s3.url)  # the environment's store, as `%pipeline config --store` gives one
    pipeline = pipeline_of(
        "%%step first --no-install\nx = 41\nprint('first ran')",
        "%%step boom --no-install\nvalue = x + 1\nraise ValueError(f'bad value {value}')",
        "%%step after --no-install\ny = value * 2",
    )
    pipeline.configure(host=kfp_server.url)
    with pytest.raises(RunFailed) as failure:
        pipeline.run(wait=True, progress=TextProgress(io.StringIO()))
    run = failure.value.run
    assert "Step 'boom' failed: ValueError: bad value 42" in str(failure.value)
    assert f"`%pipeline pull boom {run.id}` loads what step 'boom' saw" in str(failure.value)
    assert run.load("x") == 41 and run.metrics == {}
    log = pipeline.logs("boom")
    assert 'File "step boom, cell 1", line 3' in log and log.rstrip().endswith("ValueError: bad value 42")
    with pytest.raises(KfmagicError, match=r"step 'after' of run .* did not run \(SKIPPED\), so it has no log"):
        pipeline.logs("after")
    with pytest.raises(KfmagicError, match=r"run.load\('value'\): step 'boom' has the value, but did not save it: "
                                           r"the step did not finish \(FAILED\)"):
        run.load("value")
    # opened again by kfmagic's id (its submission's folder here), from a pipeline that knows no cluster
    opened = Pipeline().open_run(os.path.basename(run.run_dir))
    assert (opened.id, opened.state, opened.load("x")) == (run.id, "FAILED", 41)
    assert [(s.name, s.state) for s in opened.steps.values()] == [("first", "SUCCEEDED"), ("boom", "FAILED"), ("after", "SKIPPED")]
    # listed with this folder's runs, as far as this machine read it back
    listed = repr(Pipeline(name="stored").runs()).splitlines()[3].split()
    assert listed[:3] == [os.path.basename(run.run_dir).split("-", 3)[-1], "kfp", "failed"] and listed[-1] == "-"
    # what the failed step read, to re-run its cell in the notebook: from the store, by either id
    for run_id in (run.id, os.path.basename(run.run_dir).split("-", 3)[-1]):
        pulled = Pipeline(name="stored", cells=pipeline.cells, connection=pipeline.connection).pull("boom", run_id)
        assert (pulled.run.id, pulled.values, pulled.told) == (run.id, {"x": 41}, [("x", "from step 'first'")])


def test_a_store_the_pods_cannot_write_is_one_line_in_their_log_and_the_run_succeeds(s3, kfp_server, tmp_path, monkeypatch):
    """A bucket that does not exist: each step's pod (the stand-in's kfp.local task) says so in one
    line, ends as it ran, and the kernel says where the records are missing."""
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of("%%step only --no-install\nx = 1")
    pipeline.configure(host=kfp_server.url, store="s3://no-such-bucket/runs")
    run = pipeline.run(wait=True, progress=TextProgress(io.StringIO()))
    assert run.state == "SUCCEEDED"
    said = [line for line in kfp_server.run_log(run.id).splitlines() if "could not write its records" in line]
    where = f"s3://no-such-bucket/runs/stored/{run.run_dir.rsplit('/', 1)[-1]}"
    assert len(said) == 1 and f"kfmagic: step 'only' could not write its records to the run store {where}: " in said[0]
    assert "The step's outcome stands" in said[0] and SECRET not in said[0]
    with pytest.raises(KfmagicError, match=rf"run.load\('x'\): step 'only' of run .* left no record in the run store "
                                           rf"{where}: its pod could not write there \(its log on Kubeflow says why"):
        run.load("x")


def test_without_a_store_load_metrics_and_logs_say_what_to_configure(kfp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KFMAGIC_STORE", raising=False)
    pipeline = pipeline_of("%%step only --no-install\nx = 1")
    pipeline.configure(host=kfp_server.url)
    run = pipeline.run(wait=True, progress=TextProgress(io.StringIO()))
    assert "kfmagic_store" not in kfp_server.get_run(run.id)["runtime_config"].get("parameters", {})
    fix = (
        f"ran on Kubeflow without a run store, so its results stay in the cluster (its page: {run.url}). To read the "
        "values, metrics and logs of cluster runs here, give a store before submitting: `%pipeline config --host "
        "URL --store s3://BUCKET/PREFIX` (or set KFMAGIC_STORE"
    )
    for attempt, what in ((lambda: run.load("x"), "run.load('x')"), (lambda: run.metrics, "run.metrics"),
                          (lambda: pipeline.logs("only"), "logs of step 'only'")):
        with pytest.raises(KfmagicError) as error:
            attempt()
        assert str(error.value).startswith(f"{what}: run {run.id} {fix}")
        assert "AWS_ACCESS_KEY_ID" in str(error.value) and "`%pipeline run --local`" in str(error.value)


@pytest.mark.parametrize("url, message", [
    ("mybucket/runs", "--store mybucket/runs: give the run store as a URL: s3://BUCKET/PREFIX"),
    ("s3://", "--store s3://: give the run store as a URL"),
    ("nosuch://bucket/x", "--store nosuch://bucket/x: fsspec knows no storage called 'nosuch'"),
    (f"s3://{ACCESS_KEY}:{SECRET}@bucket/x", "--store: the store URL holds credentials (before '@')"),
])
def test_a_store_url_kfmagic_cannot_use_is_one_message_without_its_credentials(url, message):
    with pytest.raises(KfmagicError) as error:
        Pipeline().configure(store=url)
    assert str(error.value).startswith(message) and SECRET not in str(error.value)


def test_with_a_store_the_pipeline_takes_where_to_write_and_the_pods_install_the_store_client(tmp_path, monkeypatch, capsys):
    """Compiled for a cluster (pip installs on): fsspec and s3fs pinned to the kernel's versions in every
    step, the two parameters given to the runtime task only (no per-step cost), nothing of the store
    without one, and a step asking for Kubeflow's cache told it will not get it."""
    pytest.importorskip("s3fs", reason="the run store's S3 backend (pip install 'kfmagic[store]')")
    import fsspec
    import s3fs
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KFMAGIC_STORE", raising=False)
    pipeline = pipeline_of("%%step a\nx = 1", "%%step b --cache\ny = x + 1")
    plain = yaml.safe_load(open(pipeline.compile("plain.yaml")))
    assert "--cache" not in capsys.readouterr().err
    pipeline.configure(store="s3://bucket/prefix/")
    stored = yaml.safe_load(open(pipeline.compile("stored.yaml")))
    assert capsys.readouterr().err.splitlines() == [
        "warning: Step 'b' asks for --cache, but with a run store (s3://bucket/prefix) each run's steps write their "
        "records under that run, so Kubeflow runs every step (one reused from its cache would leave none). Drop "
        "--cache, or configure no store."
    ]
    assert stored["root"]["inputDefinitions"]["parameters"] == {
        "kfmagic_run_id": {"defaultValue": "", "isOptional": True, "parameterType": "STRING"},
        "kfmagic_store": {"defaultValue": "s3://bucket/prefix/stored", "isOptional": True, "parameterType": "STRING"},
    }
    assert "inputDefinitions" not in plain["root"]
    tasks = stored["root"]["dag"]["tasks"]
    assert set(tasks["kfmagic-runtime"]["inputs"]["parameters"]) == {"kfmagic_store", "kfmagic_run_id", "kfmagic_job_id"}
    assert "parameters" not in tasks["a"]["inputs"] and "parameters" not in tasks["b"]["inputs"]
    for step in ("a", "b"):
        command = " ".join(stored["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["command"])
        assert f"'fsspec=={fsspec.__version__}'" in command and f"'s3fs=={s3fs.__version__}'" in command
        assert "fsspec" not in " ".join(plain["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["command"])


def test_logs_of_local_runs_are_kept_as_they_come_and_open_run_reads_a_cli_run(tmp_path, monkeypatch):
    """A local run keeps each step's stdout and stderr in its folder (0600) while the step still runs; a
    run the CLI made is opened by its kfmagic id: state, metrics, values and logs."""
    from nbformat import write

    monkeypatch.chdir(tmp_path)
    go = tmp_path / "go"
    write(make_notebook([
        "%%step first\nimport os, sys, time\nprint('out one')\nprint('err one', file=sys.stderr)\nvalue = 20\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)",
        "%%step second --metrics double\ndouble = value * 2\n!echo shell says hi",
    ]), str(tmp_path / "nb.ipynb"))
    cli = subprocess.Popen([sys.executable, "-m", "kfmagic.cli", "run", "nb.ipynb"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        log, deadline = None, time.time() + 30
        def lines():  # stdout's and stderr's, each in order, the two as they arrived
            return sorted(log.read_text().splitlines()) if log and log.exists() else []

        while time.time() < deadline and lines() != ["err one", "out one"]:
            found = list((tmp_path / ".kfmagic" / "runs").glob("*/first/log.txt"))
            log = found[0] if found else None
            time.sleep(0.05)
        assert lines() == ["err one", "out one"] and not go.exists()  # the step is still waiting
        go.touch()
        assert cli.wait(timeout=30) == 0
    finally:
        cli.kill()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    opened = Pipeline().open_run(log.parent.parent.name)
    assert (opened.runner, opened.state, opened.metrics) == ("local", "SUCCEEDED", {"second": {"double": 40.0}})
    assert opened.load("value") == 20 and opened.logs("second") == "shell says hi\n"
    with pytest.raises(KfmagicError, match=r"open_run\('nope'\): no run of that id in .*\.kfmagic/runs, and no "
                                           r"Kubeflow Pipelines host is configured"):
        Pipeline().open_run("nope")
    with pytest.raises(KfmagicError, match=r"^%pipeline logs first: no run yet in this kernel; name one"):
        Pipeline().logs("first")


def test_the_command_line_compiles_with_a_store_and_refuses_one_it_cannot_use(tmp_path, capsys):
    pytest.importorskip("s3fs", reason="the run store's S3 backend (pip install 'kfmagic[store]')")
    import yaml
    from kfmagic import cli
    from nbformat import write

    write(make_notebook(["%pipeline init shipped", "%%step only\nx = 1"]), str(tmp_path / "nb.ipynb"))
    out = str(tmp_path / "out.yaml")
    assert cli.main(["compile", str(tmp_path / "nb.ipynb"), "--store", "s3://bucket/runs", "-o", out]) == 0
    defaults = yaml.safe_load(open(out))["root"]["inputDefinitions"]["parameters"]
    assert defaults["kfmagic_store"]["defaultValue"] == "s3://bucket/runs/shipped"
    assert cli.main(["compile", str(tmp_path / "nb.ipynb"), "--store", "bucket/runs", "-o", out]) == 1
    assert "kfmagic compile: --store bucket/runs: give the run store as a URL" in capsys.readouterr().err


def test_check_warns_once_of_a_file_a_step_reads_that_its_pod_will_not_have(tmp_path, capsys):
    from kfmagic import cli
    from nbformat import write

    write(make_notebook([
        "%%step load\ntext = open('data/train.csv').read()\nmore = open('data/train.csv').read()",
        "%%step use\nsize = len(text)",
    ]), str(tmp_path / "nb.ipynb"))
    assert cli.main(["check", str(tmp_path / "nb.ipynb")]) == 0
    shown = capsys.readouterr()
    assert shown.out.strip() == "the pipeline: 2 steps, no problems found."
    assert shown.err.splitlines() == [
        "warning: Step 'load' opens 'data/train.csv', a path relative to the notebook's folder: the step's pod will "
        "not have that file. Ship it with the pipeline: put it on a volume (`--volume PVC:/data`, then open "
        "'/data/...'), build it into the step's --image, or read it from object storage (s3://, gs://)."
    ]


def test_the_pipelines_own_parameter_names_are_refused_by_check_and_every_runner():
    from kfmagic.errors import PlanError
    from kfmagic.registry import Pipeline
    from kfmagic.syntax import parse_cell

    pipeline = Pipeline(name="reserved")
    for text in ("%%params\nkfmagic_store = 'mine'", "%%step a\nx = kfmagic_store"):
        pipeline.add(parse_cell(text))
    with pytest.raises(PlanError, match="Parameter 'kfmagic_store': the name is kfmagic's own pipeline parameter"):
        pipeline.check()
