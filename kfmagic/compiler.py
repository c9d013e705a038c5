"""Plan -> Kubeflow Pipelines IR YAML, written by the kfp SDK's own compiler.

One lightweight Python component per step, made from generated source: its signature declares one
artifact per variable that crosses an edge (named after the variable), the parameters the step
reads, a Metrics output for `--metrics` and an HTML output for what the cells display. A first
task carries kfmagic's runtime as text (runtime.py, serde.py and component.py, read from the package
when compiling) and the %%prelude, once, as an artifact every step takes, so the image needs no
kfmagic and runs the very runtime a local run uses.

With a run store (store.py), the pipeline takes two more parameters, `kfmagic_store` (where its
runs keep their records) and `kfmagic_run_id` (kfmagic's id of the run, which the kernel knows),
and the runtime task hands them to every step, whose pod writes its records there.
"""

import base64
import contextlib
import functools
import inspect
import json
import keyword
import linecache
import os
import sys
import types
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from . import component, runtime, serde, step_options, store
from .analysis import analyze
from .errors import KfmagicError, PlanError
from .plan import RUN_ID_PARAM, RUNTIME_TASK, STORE_PARAM, arguments, kept, kfp_name
from .packages import requirements
from .portability import shell_lines

EMBEDDED = {name: module for name, module in (("runtime.py", runtime), ("serde.py", serde), ("component.py", component))}
# Every option a step may carry; one the compiler does not know would be silently dropped.
KNOWN_OPTIONS = {
    "image", "packages", "install", "cpu", "memory", "gpu", "gpu_type", "retries", "cache", "env",
    "display_name", "secret", "volume", "isolate",  # isolate: local runs only
}
# Lists and dicts travel as JSON text: KFP's own LIST/STRUCT parameters turn every number into a
# float (protobuf Struct), and a step must get the very values a local run gets.
_PARAM_TYPES = ((bool, bool), (int, int), (float, float), (str, str), (list, str), (dict, str))
# The pipeline's parameters that say where a run keeps its records, with a run store.
RUNTIME_DISPLAY_NAME = "kfmagic runtime"  # the runtime task's name in the KFP UI


def default_image():
    """The kernel's Python: cloudpickle streams load only under the same Python version."""
    return f"python:{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class Target:
    """Where the compiled pipeline runs.

    On a cluster each step pip-installs kfp (its lightweight-component launcher) and the step's
    pinned packages; kfp.local in this very environment (`install=False`) needs neither. `store`:
    the run store's URL (checked by store.check_url), where each step's pod writes its records.
    """

    image: str | None = None
    install: bool = True
    store: str | None = None
    cache: bool = True  # False: no task may be reused from Kubeflow's cache (`run --no-cache`)


@dataclass(frozen=True)
class Fanout:
    """What makes the compiled pipeline a sweep: after the shared steps, one `dsl.ParallelFor` over the
    combinations (each its swept parameters' values) runs the `per_combination` steps once per
    combination, `parallelism` at a time (None: as many as the cluster allows)."""

    combinations: tuple  # ({param: value}, ...)
    per_combination: tuple
    parallelism: int | None = None

    @property
    def swept(self):
        return tuple(self.combinations[0])

    def items(self):
        """The loop's items: one JSON text per combination (its record folder and values). Text, because
        kfp types each field of a dict item as its first value's type, and kfp.local replaces the outputs
        of earlier tasks in the loop's inputs by the item (artifacts, which carry the data here, are spared)."""
        return [json.dumps({"folder": f"c{i + 1}", "params": values}) for i, values in enumerate(self.combinations)]


def _function_name(step_name):
    name = step_name.replace("-", "_")
    return f"{name}_step" if keyword.iskeyword(name) else name


def _param_type(name, default):
    for kind, annotation in _PARAM_TYPES:
        if isinstance(default, kind):
            return annotation
    raise KfmagicError(f"Parameter {name!r}: a default of type {type(default).__name__} cannot be a pipeline parameter.")


def pipeline_arguments(params):
    """Parameter values as the compiled pipeline takes them (lists and dicts as JSON text)."""
    return {name: json.dumps(value) if isinstance(value, (list, dict)) else value for name, value in params.items()}


class Packages(NamedTuple):
    """What the steps' pods need installed, found once per compile."""

    requirements: dict  # step -> pinned requirements
    prelude_unknown: list  # modules the prelude imports that no installed distribution provides
    unknown: dict  # step -> other such modules its own cells import
    receivers: dict  # step -> the steps that receive values it made (and so need its modules too)


def plan_packages(plan, store_url=None):
    """The Packages of every step: what its prelude, its cells and the cells of the steps its
    values come from import (each cell analysed once), and what writing to the run store at
    `store_url` takes (fsspec and its backend), pinned to the versions installed here."""
    imports = {}

    def modules_of(parts):
        for part in parts:
            if part.code not in imports:
                imports[part.code] = analyze(part.code).imports
            yield from imports[part.code]

    prelude_modules = list(modules_of(plan.prelude)) + (store.modules(store_url) if store_url else [])
    prelude_unknown = requirements(dict.fromkeys(prelude_modules))[1]
    prelude_shell = any(shell_lines(part.code) for part in plan.prelude)
    pinned, unknown, receivers = {}, {}, {}
    made_by = {}  # step -> the modules of it and of every step its values come from (plan order: producers first)
    makers = {}  # step -> the steps its values come from, transitively
    for step in plan.steps:
        producers = set(step.inputs.values())
        makers[step.name] = producers.union(*(makers[producer] for producer in producers))
        made_by[step.name] = dict.fromkeys(modules_of(step.parts))
        for producer in producers:
            made_by[step.name].update(made_by[producer])
        has_shell = prelude_shell or any(shell_lines(part.code) for part in step.parts)
        pinned[step.name] = requirements(
            dict.fromkeys([*prelude_modules, *made_by[step.name]]), step.options.get("packages") or (), shell=has_shell
        )[0]
        own = [module for module in requirements(dict.fromkeys(modules_of(step.parts)))[1] if module not in prelude_unknown]
        if own:
            unknown[step.name] = own
    for name in unknown:  # who else's pod needs the module: the steps its values reach
        receivers[name] = [step.name for step in plan.steps if name in makers[step.name]]
    return Packages(pinned, prelude_unknown, unknown, receivers)


def _installs(target, step):
    return target.install and step.options.get("install") is not False


def _runtime_source(plan, store_url):
    """The runtime task's function: it hands every step kfmagic's runtime and the %%prelude, which the
    pipeline carries once rather than once per step (a cluster refuses a workflow past ~1 MiB), and
    with a store, where the run keeps its records: a second line, the run's id being kfmagic's (else,
    for a run started elsewhere, the cluster's)."""
    shared = {
        "sources": _sources(), "prelude": [vars(part) for part in plan.prelude],
        "steps": [[step.name, list(step.assigns)] for step in plan.steps],
    }
    packed = base64.b64encode(zlib.compress(json.dumps(shared).encode(), 9)).decode()
    given = f", {STORE_PARAM}: str, {RUN_ID_PARAM}: str, kfmagic_job_id: str" if store_url else ""
    where = (
        f"        file.write('\\n' + json.dumps({{'location': {STORE_PARAM}, 'run_id': {RUN_ID_PARAM} or kfmagic_job_id}}))\n"
        if store_url else ""
    )
    return (
        f"def {RUNTIME_TASK}({RUNTIME_TASK}: Output[Artifact]{given}):\n"
        '    """kfmagic\'s runtime and the notebook\'s %%prelude, handed to every step of the pipeline."""\n'
        "    import json, os\n"
        f"    os.makedirs(os.path.dirname({RUNTIME_TASK}.path) or '.', exist_ok=True)\n"
        f"    with open({RUNTIME_TASK}.path, 'w') as file:\n"
        f"        file.write({packed!r})\n"
        f"{where}"
    )


def _component_source(function_name, plan, step, swept=None):
    """The component function's text: its KFP signature, the step's code, and how it takes the
    runtime and the prelude from the runtime task's artifact. A step of a sweep's loop (`swept`: the
    parameters the loop sets) takes those parameters, and its record folder, from the loop's item."""
    names = arguments(step)
    params = [name for name in step.params if name not in (swept or ())]
    signature = [f"{RUNTIME_TASK}: Input[Artifact]"]
    signature += [f"{names[var]}: Input[Artifact]" for var in step.inputs]
    signature += [f"{names[name]}: {_param_type(name, plan.params[name]).__name__}" for name in params]
    signature += [f"{component.COMBINATION_ARG}: str"] if swept is not None else []
    signature += [f"{var}: Output[Artifact]" for var in (*step.outputs, *kept(step))]
    if step.metrics:
        signature.append(f"{component.METRICS_OUTPUT}: Output[Metrics]")
    signature.append(f"{component.DISPLAY_OUTPUT}: Output[HTML]")
    spec = {
        "step": step.name,
        "parts": [vars(part) for part in step.parts],
        "params": {name: names[name] for name in params},
        "json_params": [name for name in params if isinstance(plan.params[name], (list, dict))],
        "combination": swept is not None,
        "inputs": {var: names[var] for var in step.inputs},
        "producers": dict(step.inputs),
        "outputs": list(step.outputs),
        "keep": kept(step),
        "metrics": list(step.metrics),
        "needed_by": step.needed_by,
    }
    return (
        f"def {function_name}({', '.join(signature)}):\n"
        f'    """kfmagic step {step.name!r}: its cells, run by kfmagic\'s runtime (from the runtime task)."""\n'
        "    _kfm_args = dict(locals())\n"
        f"    _kfm_step = {spec!r}\n"
        "    import base64, json, zlib\n"
        f"    with open({RUNTIME_TASK}.path) as _kfm_file:\n"
        "        _kfm_packed, _, _kfm_store = _kfm_file.read().partition('\\n')\n"
        "    _kfm_shared = json.loads(zlib.decompress(base64.b64decode(_kfm_packed)))\n"
        "    _kfm_driver = {'__name__': 'kfmagic_component'}\n"
        "    exec(compile(_kfm_shared['sources']['component.py'], 'kfmagic/component.py', 'exec'), _kfm_driver)\n"
        "    _kfm_driver['main'](_kfm_args, _kfm_step, _kfm_shared, _kfm_store)\n"
    )


@functools.lru_cache(maxsize=1)
def _sources_of(stamp):
    sources = {}
    for name, module in EMBEDDED.items():
        with open(module.__file__) as file:
            sources[name] = file.read()
    return sources


def _sources():
    """runtime.py, serde.py and component.py as they are now: what every step runs."""
    return _sources_of(tuple(os.path.getmtime(module.__file__) for module in EMBEDDED.values()))


_GENERATED = "<kfmagic "  # the file name of every component function kfmagic writes: "<kfmagic NAME>"


def _component(function_name, source, image, packages, install):
    """A kfp component from generated source; linecache lets kfp's inspect.getsource find the text."""
    from kfp import dsl
    from kfp.dsl import HTML, Artifact, Input, Metrics, Output

    filename = f"{_GENERATED}{function_name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"Input": Input, "Output": Output, "Artifact": Artifact, "Metrics": Metrics, "HTML": HTML}
    exec(compile(source, filename, "exec"), namespace)
    return dsl.component(
        namespace[function_name], base_image=image, packages_to_install=packages if install else None,
        install_kfp_package=install,
    )


def _make_component(plan, step, target, packages, swept=None):
    function_name = _function_name(step.name)
    install = _installs(target, step)
    return _component(
        function_name, _component_source(function_name, plan, step, swept),
        step.options.get("image") or target.image or default_image(),
        packages.requirements[step.name] if install else None, install,
    )


def _apply_options(task, options):
    """Each step option onto its kfp task; the kubernetes ones through kfp-kubernetes."""
    if options.get("cpu"):
        task.set_cpu_limit(options["cpu"])
    if options.get("memory"):
        task.set_memory_limit(options["memory"])
    if options.get("gpu"):
        task.set_accelerator_type(options.get("gpu_type") or step_options.DEFAULT_GPU_TYPE)
        task.set_accelerator_limit(options["gpu"])
    if options.get("retries"):
        task.set_retry(options["retries"])
    if options.get("cache") is not None:
        task.set_caching_options(options["cache"])
    for name, value in step_options.env(options).items():
        task.set_env_variable(name, value)
    if options.get("display_name"):
        task.set_display_name(options["display_name"])
    secrets, volumes = step_options.secrets(options), step_options.volumes(options)
    if secrets or volumes:
        try:
            from kfp import kubernetes
        except ImportError:
            raise KfmagicError(
                "--secret and --volume need the kfp-kubernetes package: pip install kfp-kubernetes "
                "(or pip install 'kfmagic[kubernetes]')."
            ) from None
        for secret, key, env_var in secrets:
            kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env={key: env_var})
        for pvc, mount_path in volumes:
            kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=mount_path)


def pipeline_function(plan, target, packages=None, fanout=None):
    """The kfp pipeline (a GraphComponent): one task per step, wired by variable and --after; with a
    `fanout` (a sweep), its per-combination steps inside one dsl.ParallelFor after the shared ones.

    `packages`: the plan's Packages when already found (found here if a step installs any)."""
    from kfp import dsl

    _refuse_what_cannot_compile(plan)
    if packages is None and any(_installs(target, step) for step in plan.steps):
        packages = plan_packages(plan, target.store)
    looped, swept = (fanout.per_combination, fanout.swept) if fanout else ((), ())
    components = {
        step.name: _make_component(plan, step, target, packages, swept if step.name in looped else None)
        for step in plan.steps
    }
    shared = _component(RUNTIME_TASK, _runtime_source(plan, target.store), target.image or default_image(), [], target.install)
    defaults = pipeline_arguments({name: value for name, value in plan.params.items() if name not in swept})
    if target.store:
        defaults.update({STORE_PARAM: store.pipeline_location(target.store, plan.name), RUN_ID_PARAM: ""})
    names = list(defaults)

    def body(*values):
        params = dict(zip(names, values))
        tasks = {}
        if target.store:
            runtime_task = shared(
                **{name: params[name] for name in (STORE_PARAM, RUN_ID_PARAM)}, kfmagic_job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
            )
        else:
            runtime_task = shared()
        runtime_task.set_display_name(RUNTIME_DISPLAY_NAME)
        if not target.cache:
            runtime_task.set_caching_options(False)

        def add(step, given):
            argument = arguments(step)
            given = {RUNTIME_TASK: runtime_task.outputs[RUNTIME_TASK], **given}
            given.update({argument[var]: tasks[producer].outputs[var] for var, producer in step.inputs.items()})
            given.update({argument[name]: params[name] for name in step.params if name not in swept})
            task = components[step.name](**given)
            for upstream in step.upstream:
                if upstream not in step.inputs.values():
                    task.after(tasks[upstream])
            _apply_options(task, step.options if target.cache else dict(step.options, cache=False))
            tasks[step.name] = task

        for step in plan.steps:
            if step.name not in looped:
                add(step, {})
        if looped:
            with dsl.ParallelFor(items=fanout.items(), parallelism=fanout.parallelism) as combination:
                for step in plan.steps:
                    if step.name in looped:
                        add(step, {component.COMBINATION_ARG: combination})

    body.__name__ = plan.name.replace("-", "_")
    body.__signature__ = inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                          annotation=_param_type(name, default))
        for name, default in defaults.items()
    ])
    return dsl.pipeline(name=kfp_name(plan.name), description=f"kfmagic pipeline {plan.name}")(body)


def _refuse_what_cannot_compile(plan):
    """A step option the compiler does not know would be dropped, and a parameter named like kfmagic's
    own would clash with them: refused, every one."""
    problems = []
    for step in plan.steps:
        unknown = sorted(set(step.options) - KNOWN_OPTIONS)
        if unknown:
            problems.append(
                f"Step {step.name!r}: option(s) {', '.join('--' + o.replace('_', '-') for o in unknown)} cannot be "
                "expressed in a Kubeflow pipeline; remove them before compiling."
            )
    if problems:
        raise PlanError(problems)


def store_warnings(plan, target):
    """What a run store changes for the compiled pipeline that a step asked otherwise: with one, every
    run's steps write their records under that run, so Kubeflow's cache reuses none of them."""
    if not target.store:
        return []
    return [
        f"Step {step.name!r} asks for --cache, but with a run store ({target.store}) each run's steps write their "
        "records under that run, so Kubeflow runs every step (one reused from its cache would leave none). Drop "
        "--cache, or configure no store."
        for step in plan.steps if step.options.get("cache") is True
    ]


def compile_plan(plan, path, target=Target(), packages=None, fanout=None):
    """Write the plan's IR YAML to `path` with kfp's Compiler; returns the path.

    `packages`: the plan's Packages (plan_packages), if the caller has found them already; `fanout`: a
    sweep's combinations, run in a dsl.ParallelFor."""
    from kfp import compiler

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with _faster_kfp():
            compiler.Compiler().compile(pipeline_function(plan, target, packages, fanout), path)
    except (ValueError, TypeError) as error:  # kfp's own checks: say which pipeline, keep its words
        raise KfmagicError(f"Kubeflow Pipelines cannot compile pipeline {plan.name!r}: {error}") from None
    except OSError as error:
        raise KfmagicError(f"Cannot write the compiled pipeline to {path}: {_why_unwritable(path, error)}.") from None
    return path


@contextlib.contextmanager
def _faster_kfp():
    """Three costs of kfp's compiler that grow with a pipeline's steps, lifted while it compiles ours:
    it writes the IR with PyYAML's pure-Python emitter (libyaml's C emitter, where PyYAML has it,
    writes the same documents several times faster); for each task it sanitizes the name of every
    task of the DAG again (a pure function of the name: remembered); and it finds each component
    function's text by tokenizing it (`inspect.getsource`), where ours is the whole generated text
    `_component` keeps. Same output; without libyaml, or where kfp moves these, it simply compiles
    as it does."""
    import yaml
    from kfp.compiler import pipeline_spec_builder
    from kfp.dsl import component_factory, utils

    saved = pipeline_spec_builder.yaml, utils.sanitize_task_name, component_factory._get_function_source_definition
    if yaml.__with_libyaml__:
        pipeline_spec_builder.yaml = types.SimpleNamespace(
            dump_all=lambda documents, stream, **options: yaml.dump_all(documents, stream, Dumper=yaml.CDumper, **options)
        )
    utils.sanitize_task_name = functools.lru_cache(maxsize=None)(utils.sanitize_task_name)
    find_source = saved[2]

    def generated_source(function):
        filename = function.__code__.co_filename
        if filename.startswith(_GENERATED) and filename in linecache.cache:
            return "".join(linecache.cache[filename][2])
        return find_source(function)

    component_factory._get_function_source_definition = generated_source
    try:
        yield
    finally:
        pipeline_spec_builder.yaml, utils.sanitize_task_name, component_factory._get_function_source_definition = saved


def _why_unwritable(path, error):
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a folder; give -o a path in a folder"
    return f"{error.strerror or error}; give -o a path in a folder you can write"

