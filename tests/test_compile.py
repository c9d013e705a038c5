"""`%pipeline compile`: the plan as Kubeflow Pipelines IR, written by kfp's compiler and read back strictly."""

import importlib.metadata
import json
import os
import sys

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from kfmagic.errors import CellSyntaxError, KfmagicError
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell


def load_ir(path):
    """The IR documents; the PipelineSpec parsed as kfp.Client does (unknown fields are errors)."""
    with open(path) as file:
        docs = list(yaml.safe_load_all(file))
    json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    return docs


def pipeline_of(*cells, name="demo"):
    pipeline = Pipeline().init(name)
    for number, text in enumerate(cells):
        pipeline.add(parse_cell(text), label=f"cell {number}")
    return pipeline


def executor(spec, step):
    return spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]


def install_line(container):
    """The pip command the step's container runs first ('' when it installs nothing)."""
    return container["command"][2] if container["command"][:2] == ["sh", "-c"] else ""


def test_kernel_compiles_one_component_per_step_with_artifacts_params_and_options(run_cells, tmp_path):
    out = run_cells([
        "%load_ext kfmagic\n%pipeline init wine --image python:3.11-slim",
        "%%prelude\nimport math",
        "%%params\nscale = 2\nlabel = 'x'\nflags = {'a': True}\nunused = 0.5",
        "%%step load --cpu 500m --memory 1Gi --env MODE=fast LEVEL=2\nimport numpy as np\ndata = [1, 2, 3]\nweights = np.ones(3)",
        "%%step train_model --metrics total --gpu 2 --gpu-type nvidia.com/a100 --retries 3 --no-cache "
        "--display-name 'Train it'\ntotal = float(sum(x * scale for x in data) + weights.sum())",
        "%%step report --after train_model --image python:3.11 --secret creds:user:DB_USER "
        "--volume data-pvc:/data --packages numpy==1.0 extra-lib\nprint(label, data, flags)",
        "%%step prepared --no-install --cache\nready = math.pi",
        "%pipeline compile -o out/p.yaml",
    ])
    assert "wrote out/p.yaml" in out[-1]
    spec, platform = load_ir(tmp_path / "out" / "p.yaml")
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"kfmagic-runtime", "load", "train-model", "report", "prepared"}
    assert set(spec["components"]) == {f"comp-{t}" for t in tasks}
    # each variable crossing an edge: an artifact of its own, output of the producer, input of each reader
    load_outputs = spec["components"]["comp-load"]["outputDefinitions"]["artifacts"]
    assert {"data", "weights"} <= set(load_outputs) and "kfmagic_output" in load_outputs
    assert load_outputs["kfmagic_output"]["artifactType"]["schemaTitle"] == "system.HTML"
    train_inputs = tasks["train-model"]["inputs"]
    assert train_inputs["artifacts"]["data"]["taskOutputArtifact"] == {"outputArtifactKey": "data", "producerTask": "load"}
    assert train_inputs["artifacts"]["weights"]["taskOutputArtifact"]["producerTask"] == "load"
    assert tasks["report"]["inputs"]["artifacts"]["data"]["taskOutputArtifact"]["producerTask"] == "load"
    assert tasks["report"]["dependentTasks"] == ["kfmagic-runtime", "load", "train-model"]  # --after, no data
    # parameters typed from their defaults, wired only where read
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in params.items()} == {
        "scale": "NUMBER_INTEGER", "label": "STRING", "flags": "STRING", "unused": "NUMBER_DOUBLE",
    }
    assert params["flags"]["defaultValue"] == '{"a": true}'  # lists and dicts travel as exact JSON text
    assert train_inputs["parameters"] == {"scale": {"componentInputParameter": "scale"}}
    assert set(tasks["report"]["inputs"]["parameters"]) == {"label", "flags"}
    assert set(tasks["load"]["inputs"]) == {"artifacts"} and set(tasks["load"]["inputs"]["artifacts"]) == {"kfmagic_runtime"}
    metrics = spec["components"]["comp-train-model"]["outputDefinitions"]["artifacts"]["kfmagic_metrics"]
    assert metrics["artifactType"]["schemaTitle"] == "system.Metrics"
    assert "kfmagic_metrics" not in load_outputs
    # options on the tasks and containers
    load = executor(spec, "load")
    assert load["image"] == "python:3.11-slim" and executor(spec, "report")["image"] == "python:3.11"
    assert load["resources"]["resourceCpuLimit"] == "500m" and load["resources"]["resourceMemoryLimit"] == "1Gi"
    assert {e["name"]: e["value"] for e in load["env"]} == {"MODE": "fast", "LEVEL": "2"}
    accelerator = executor(spec, "train-model")["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/a100" and accelerator["resourceCount"] == "2"
    assert tasks["train-model"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["train-model"]["cachingOptions"] == {}  # --no-cache
    assert tasks["prepared"]["cachingOptions"] == {"enableCache": True}
    assert tasks["train-model"]["taskInfo"]["name"] == "Train it"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-report"]
    assert k8s["secretAsEnv"][0]["secretName"] == "creds"
    assert k8s["secretAsEnv"][0]["keyToEnv"] == [{"envVar": "DB_USER", "secretKey": "user"}]
    assert k8s["pvcMount"][0]["mountPath"] == "/data" and k8s["pvcMount"][0]["constant"] == "data-pvc"
    # packages: what the step imports, pinned to this kernel's versions, plus marshalling and kfp
    numpy, cloudpickle = (f"{d}=={importlib.metadata.version(d)}" for d in ("numpy", "cloudpickle"))
    assert f"'{numpy}'" in install_line(load) and f"'{cloudpickle}'" in install_line(load)
    assert "'kfp==" in install_line(load)
    report_install = install_line(executor(spec, "report"))
    assert "'numpy==1.0'" in report_install and "'extra-lib'" in report_install and numpy not in report_install
    assert install_line(executor(spec, "prepared")) == ""  # --no-install
    # the step's code and kfmagic's runtime travel in the component; the image needs no kfmagic
    program = executor(spec, "train-model")["command"][-1]
    assert "from kfmagic" not in program and "import kfmagic" not in program
    assert "total = float(sum(x * scale for x in data) + weights.sum())" in program


def test_default_image_is_the_kernel_python_and_compile_returns_the_default_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = pipeline_of("%%step only\nx = 1", name="tiny_one").compile()
    assert path == "tiny_one.yaml" and os.path.exists(tmp_path / "tiny_one.yaml")
    spec = load_ir(path)[0]
    assert spec["pipelineInfo"]["name"] == "tiny-one"
    assert executor(spec, "only")["image"] == f"python:{sys.version_info.major}.{sys.version_info.minor}"


def test_compile_warns_about_what_a_pod_cannot_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    big = tmp_path / ".kfmagic" / "runs" / "old-run" / "load"
    big.mkdir(parents=True)
    (big / "result.json").write_text(json.dumps({  # as the runtime writes it
        "state": "SUCCEEDED", "error": None, "saved": {"frame": {"type": "list", "bytes": 300 * 2**20}},
        "skipped": {}, "metrics": {},
    }))
    pipeline = pipeline_of(
        "%%step load\nframe = open('data/train.csv').read()\n!ls data",
        "%%step use\n%pip install requests\n%matplotlib inline\nn = len(frame)",
        "%%step local_lib\nimport my_private_helpers\ny = 2",
    )
    path = pipeline.compile(str(tmp_path / "p.yaml"))
    said = capsys.readouterr().err
    assert "Step 'load' opens 'data/train.csv'" in said and "--volume" in said
    assert "Step 'load' passes 'frame' (300 MiB" in said and "use" in said
    assert "Step 'load' runs the shell command `!ls`" in said
    assert "Step 'use' runs `%pip`" in said and "--packages" in said
    assert "Step 'use' runs `%matplotlib`" in said
    assert "Step 'local_lib' imports my_private_helpers" in said
    spec = load_ir(path)[0]
    ipython = f"'ipython=={importlib.metadata.version('ipython')}'"
    assert ipython in install_line(executor(spec, "use")) and ipython in install_line(executor(spec, "load"))
    assert ipython not in install_line(executor(spec, "local-lib"))


def test_a_module_the_prelude_imports_that_nothing_provides_is_reported_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pipeline = pipeline_of(
        "%%prelude\nimport my_private_helpers",
        "%%step a\nx = 1",
        "%%step b\nimport other_private_module\ny = x + 1",
    )
    pipeline.compile(str(tmp_path / "p.yaml"))
    captured = capsys.readouterr()
    assert captured.out == ""  # warnings go to stderr
    assert captured.err.count("my_private_helpers") == 1
    assert "The %%prelude imports my_private_helpers, which no installed package provides" in captured.err
    assert "Step 'b' imports other_private_module," in captured.err and "Step 'a'" not in captured.err


@pytest.mark.parametrize("line, words", [
    ("--memory 4Gb", "--memory 4Gb: write memory as a Kubernetes quantity"),
    ("--cpu lots", "--cpu lots: write CPUs as a number"),
    ("--gpu-type t4", "--gpu-type t4: also say how many with --gpu N"),
    ("--gpu 0", "--gpu 0: ask for at least one GPU"),
    ("--retries -1", "--retries -1: the number of retries is 0 or more"),
    ("--env 9X=1", "--env 9X=1: write NAME=VALUE"),
    ("--secret creds:user", "--secret creds:user: write SECRET_NAME:KEY:ENV_VAR"),
    ("--volume data", "--volume data: write PVC_NAME:/absolute/mount/path"),
    ("--no-install --packages numpy", "--packages numpy: --no-install says the image has everything"),
])
def test_bad_step_options_are_errors_naming_step_and_option(line, words):
    with pytest.raises(CellSyntaxError) as error:
        parse_cell(f"%%step train {line}\nx = 1")
    assert str(error.value).startswith("%%step train: ") and words in str(error.value)


def test_bad_option_in_the_kernel_is_one_line_without_traceback(run_cells):
    out = run_cells(["%load_ext kfmagic", "%%step train --memory 4Gb\nx = 1"], allow_errors=True)
    assert "--memory 4Gb: write memory as a Kubernetes quantity" in out[1]
    assert "Traceback" not in out[1] and "kfmagic/" not in out[1]


def test_what_kubeflow_cannot_take_is_an_error_not_dropped(tmp_path):
    clash = pipeline_of("%%step a_b\nx = 1", "%%step a-b\ny = 2")
    with pytest.raises(KfmagicError, match="both become the Kubeflow task 'a-b'"):
        clash.compile(str(tmp_path / "p.yaml"))
    reserved = pipeline_of("%%step a\nkfmagic_output = 1", "%%step b\nprint(kfmagic_output)")
    with pytest.raises(KfmagicError, match="'kfmagic_output' is reserved"):
        reserved.compile(str(tmp_path / "p.yaml"))
    hidden = pipeline_of("%%step a\n_hidden = 1", "%%step b\nfor _ in range(2):\n    print(_hidden)")
    with pytest.raises(KfmagicError, match="'_hidden' on or receives it, but Kubeflow names .* must begin with a letter"):
        hidden.compile(str(tmp_path / "p.yaml"))
    pipeline_of("%%step last\nfor _ in range(2):\n    _tmp = 1").compile(str(tmp_path / "p.yaml"))  # kept if possible
    unknown = pipeline_of("%%step a\nx = 1")
    plan = unknown.plan()
    from kfmagic import compiler

    step = plan.steps[0]
    step.options["timeout"] = "1h"  # an option some other part might add that the compiler cannot express
    with pytest.raises(KfmagicError, match="--timeout cannot be expressed"):
        compiler.compile_plan(plan, str(tmp_path / "p.yaml"))


def test_a_step_installs_the_libraries_of_the_values_it_receives(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = pipeline_of(
        "%%step make\nimport numpy as np\nweights = np.ones(3)",
        "%%step relay\ncopy = weights",
        "%%step use\nimport json\ntext = json.dumps(list(copy))",
        "%%step alone\nimport json\nother = json.dumps([1])",
    ).compile()
    spec = load_ir(path)[0]
    numpy_pin = f"numpy=={importlib.metadata.version('numpy')}"
    for step in ("make", "relay", "use"):  # `use` never imports numpy, but unpickles an array
        assert numpy_pin in install_line(executor(spec, step)), step
    assert "numpy" not in install_line(executor(spec, "alone"))


def compiled(tmp_path, *cells):
    """The PipelineSpec of the cells' pipeline, parsed strictly; none of these needs kfp-kubernetes."""
    docs = load_ir(pipeline_of(*cells).compile(str(tmp_path / "p.yaml")))
    assert len(docs) == 1  # no platform spec document
    return docs[0]


def test_resource_limits_reach_each_container(tmp_path):
    spec = compiled(
        tmp_path,
        "%%step small --cpu 500m --memory 1Gi\nx = 1",
        "%%step wide --cpu 2 --memory 4G\ny = 2",
        "%%step gpu --gpu 2 --gpu-type nvidia.com/a100\nz = 3",
        "%%step gpu_default --gpu 1\nw = 4",
        "%%step plain\nv = 5",
    )
    assert executor(spec, "small")["resources"] == {
        "cpuLimit": 0.5, "resourceCpuLimit": "500m", "memoryLimit": 1.073741824, "resourceMemoryLimit": "1Gi",
    }
    assert executor(spec, "wide")["resources"] == {
        "cpuLimit": 2.0, "resourceCpuLimit": "2", "memoryLimit": 4.0, "resourceMemoryLimit": "4G",
    }
    assert executor(spec, "gpu")["resources"] == {
        "accelerator": {"count": "2", "resourceCount": "2", "type": "nvidia.com/a100", "resourceType": "nvidia.com/a100"},
    }
    assert executor(spec, "gpu-default")["resources"] == {
        "accelerator": {"count": "1", "resourceCount": "1", "type": "nvidia.com/gpu", "resourceType": "nvidia.com/gpu"},
    }
    assert "resources" not in executor(spec, "plain")


def test_retries_become_the_tasks_retry_policy(tmp_path):
    tasks = compiled(tmp_path, "%%step flaky --retries 3\nx = 1", "%%step once --retries 0\ny = 2", "%%step plain\nz = 3")[
        "root"]["dag"]["tasks"]
    assert tasks["flaky"]["retryPolicy"] == {
        "maxRetryCount": 3, "backoffDuration": "0s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s",
    }
    assert "retryPolicy" not in tasks["once"] and "retryPolicy" not in tasks["plain"]


def test_cache_on_off_and_default(tmp_path):
    tasks = compiled(tmp_path, "%%step on --cache\nx = 1", "%%step off --no-cache\ny = 2", "%%step default\nz = 3")[
        "root"]["dag"]["tasks"]
    assert tasks["on"]["cachingOptions"] == {"enableCache": True}
    assert tasks["off"]["cachingOptions"] == {}  # enableCache false (protobuf leaves a false field out)
    assert tasks["default"]["cachingOptions"] == {"enableCache": True}  # KFP's default: cached


def test_after_edges_without_data_are_dependent_tasks(tmp_path):
    tasks = compiled(
        tmp_path,
        "%%step a\nx = 1",
        "%%step b --after a\nprint('reads nothing')",
        "%%step c --after b\ny = x + 1",
        "%%step d\nz = y * 2",
        "%%step e --after a d\nprint('end')",
    )["root"]["dag"]["tasks"]
    shared = "kfmagic-runtime"  # every step takes kfmagic's runtime from it
    assert tasks["a"]["dependentTasks"] == [shared] and set(tasks["b"]["inputs"]["artifacts"]) == {"kfmagic_runtime"}
    assert {name: tasks[name]["dependentTasks"] for name in "bcde"} == {
        "b": ["a", shared], "c": ["a", "b", shared], "d": ["c", shared], "e": ["a", "d", shared],
    }


def test_parameters_are_typed_and_wired_only_into_the_steps_that_read_them(tmp_path):
    spec = compiled(
        tmp_path,
        "%%params\nscale = 2\nrate = 0.5\nlabel = 'x'\nloud = True\nsizes = [1, 2]\nopts = {'a': 1}\nunused = 3",
        "%%step a\nx = scale * rate",
        "%%step b\ny = label if loud else ''",
        "%%step c\nz = sizes + [opts]",
        "%%step d\nw = x + 1",
    )
    assert spec["root"]["inputDefinitions"]["parameters"] == {
        "scale": {"parameterType": "NUMBER_INTEGER", "defaultValue": 2, "isOptional": True},
        "rate": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.5, "isOptional": True},
        "label": {"parameterType": "STRING", "defaultValue": "x", "isOptional": True},
        "loud": {"parameterType": "BOOLEAN", "defaultValue": True, "isOptional": True},
        "sizes": {"parameterType": "STRING", "defaultValue": "[1, 2]", "isOptional": True},
        "opts": {"parameterType": "STRING", "defaultValue": '{"a": 1}', "isOptional": True},
        "unused": {"parameterType": "NUMBER_INTEGER", "defaultValue": 3, "isOptional": True},
    }
    tasks = spec["root"]["dag"]["tasks"]
    wired = {name: tasks[name]["inputs"].get("parameters") for name in "abcd"}
    assert wired == {
        "a": {"scale": {"componentInputParameter": "scale"}, "rate": {"componentInputParameter": "rate"}},
        "b": {"label": {"componentInputParameter": "label"}, "loud": {"componentInputParameter": "loud"}},
        "c": {"sizes": {"componentInputParameter": "sizes"}, "opts": {"componentInputParameter": "opts"}},
        "d": None,
    }
    typed = {name: spec["components"][f"comp-{name}"].get("inputDefinitions", {}).get("parameters") for name in "abc"}
    assert typed == {
        "a": {"scale": {"parameterType": "NUMBER_INTEGER"}, "rate": {"parameterType": "NUMBER_DOUBLE"}},
        "b": {"label": {"parameterType": "STRING"}, "loud": {"parameterType": "BOOLEAN"}},
        "c": {"sizes": {"parameterType": "STRING"}, "opts": {"parameterType": "STRING"}},
    }


def test_a_value_a_step_changes_is_its_input_var_in_and_its_output(tmp_path):
    spec = compiled(tmp_path, "%%step make\nitems = [1]", "%%step grow\nitems.append(2)", "%%step use\ntotal = sum(items)")
    tasks, components = spec["root"]["dag"]["tasks"], spec["components"]
    runtime = {"kfmagic_runtime": {"taskOutputArtifact": {"producerTask": "kfmagic-runtime", "outputArtifactKey": "kfmagic_runtime"}}}
    assert tasks["grow"]["inputs"]["artifacts"] == {
        "items_in": {"taskOutputArtifact": {"producerTask": "make", "outputArtifactKey": "items"}}, **runtime,
    }
    assert tasks["use"]["inputs"]["artifacts"] == {
        "items": {"taskOutputArtifact": {"producerTask": "grow", "outputArtifactKey": "items"}}, **runtime,
    }
    assert set(components["comp-grow"]["inputDefinitions"]["artifacts"]) == {"items_in", "kfmagic_runtime"}
    assert set(components["comp-grow"]["outputDefinitions"]["artifacts"]) == {"items", "kfmagic_output"}


def test_a_local_module_is_blamed_on_the_step_that_imports_it_and_its_receivers_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "localmod.py").write_text("def f():\n    return 1\n")
    pipeline_of(
        "%%step a\nimport localmod\nx = localmod.f()", "%%step b\ny = x + 1", "%%step c\nz = y + 1"
    ).compile(str(tmp_path / "p.yaml"))
    said = capsys.readouterr().err
    assert "Step 'a' imports localmod" in said and "nor will the pods of 'b', 'c', which receive values" in said
    assert "Step 'b' imports" not in said and "Step 'c' imports" not in said


def _chain(steps, code_bytes=0):
    filler = f"\nnote = {'x' * code_bytes!r}" if code_bytes else ""
    return ["%%prelude\nimport math", "%%step s0\nx0 = 0", *(f"%%step s{i}\nx{i} = x{i - 1} + 1{filler}" for i in range(1, steps))]


def test_the_runtime_and_prelude_are_carried_once_and_a_step_costs_little_beyond_its_code(tmp_path, capsys):
    path = pipeline_of(*_chain(100)).compile(str(tmp_path / "p.yaml"))
    text = open(path).read()
    cells = sum(len(c) for c in _chain(100))
    assert len(text.encode()) < 100 * 4096 + cells and len(text.encode()) < 400 * 1024
    spec = load_ir(path)[0]
    runtime = executor(spec, "kfmagic-runtime")["command"][-1]
    packed = max(runtime.split("'"), key=len)  # the runtime and prelude, compressed, in the one task
    assert len(packed) > 5000 and text.count(packed[:200]) == 1
    assert "import math" not in executor(spec, "s1")["command"][-1]  # the prelude is the runtime task's
    assert "warning:" not in capsys.readouterr().err


def test_a_pipeline_near_what_a_cluster_accepts_is_warned_about_with_the_fix(tmp_path, capsys):
    pipeline_of(*_chain(120, code_bytes=2000)).compile(str(tmp_path / "p.yaml"))
    said = capsys.readouterr().err
    assert "The compiled pipeline is" in said and "etcdserver: request is too large" in said
    assert "Split the notebook into smaller pipelines" in said


def test_what_kfmagic_lifts_from_kfps_compiler_leaves_the_pipeline_it_writes_as_it_was(tmp_path, monkeypatch):
    """compile_plan skips some of kfp's work (its YAML emitter, names sanitized again, each component's
    source tokenized): the file must hold what kfp writes on its own, for a sweep's loop too."""
    import contextlib

    from kfmagic import compiler

    plan = pipeline_of("%%params\nC = 1.0\nname = 'a'", "%%prelude\nimport math",
                       "%%step load\nrows = [1, 2]", "%%step fit --after load\nscore = C * len(rows)",
                       "%%step report\nprint(name, score)").plan()
    fanout = compiler.Fanout(({"C": 0.5}, {"C": 2.0}), ("fit", "report"), 2)
    for with_fanout in (None, fanout):
        ours = load_ir(compiler.compile_plan(plan, str(tmp_path / "ours.yaml"), fanout=with_fanout))
        monkeypatch.setattr(compiler, "_faster_kfp", contextlib.nullcontext)
        kfps = load_ir(compiler.compile_plan(plan, str(tmp_path / "kfps.yaml"), fanout=with_fanout))
        monkeypatch.undo()
        assert ours == kfps and "def fit(kfmagic_runtime" in json.dumps(ours)
