"""Kubeflow Kale's cell tags -> the kfmagic magics that declare the same pipeline.

A Kale notebook is translated to cell text (`%%step NAME --after ...` + the cell's code), not to
registry objects: the kernel's parser then reads it like any kfmagic notebook, and
`kfmagic convert` writes exactly that text, so the converted file declares the same pipeline.

Kale's rules kept: `imports`/`functions` cells are the prelude, `pipeline-parameters` the params,
untagged code cells join the block before them (cells before any block are not in the pipeline),
`skip` cells are left out without ending the block. Kale's faults not kept: `prev:` edges stay
even when no data flows (`--after`); `%`/`!` lines run as in the kernel; odd spacing and case in
tags are accepted; step names are normalised (`step_name`) instead of rejected.
"""

import ast
import copy
import re
import shlex
from dataclasses import dataclass, field


from . import syntax
from .analysis import AnalysisError, analyze
from .errors import CellSyntaxError, KfmagicError

_SPECIAL = {"skip", "imports", "functions", "pipeline-parameters", "pipeline-metrics"}
_KALE_KEYS = {"step", "block", "prev", "limit", "image", "cache", "annotation", "label"}
_PARAMS, _METRICS = "pipeline-parameters", "pipeline-metrics"
_GPU_KEY_RE = re.compile(r"(^|[./])gpu$")
METADATA_KEY = "kubeflow_notebook"  # where Kale keeps pipeline name, experiment, image, defaults


@dataclass
class Translation:
    header: str  # `%load_ext kfmagic` + `%pipeline init ...` from the notebook's Kale settings
    texts: list  # per notebook cell: its kfmagic text, or None when the cell is not in the pipeline
    warnings: list = field(default_factory=list)


@dataclass
class _Tags:
    role: str | None = None  # a special tag, "step", or None (untagged: joins the block before)
    step: str | None = None  # Kale's step name, as written
    prev: list = field(default_factory=list)
    options: dict = field(default_factory=dict)  # limit/image/cache, as Kale wrote them


def step_name(raw):
    """A kfmagic step name for any Kale name: lowercase, runs of other characters -> '_'.

    Deterministic, so `prev:` tags and step tags always meet; names that normalise alike are one
    step: 'Load Data' and 'load_data' -> 'load_data', '1st' -> 'step_1st'.
    """
    name = re.sub(r"[^a-z0-9_-]+", "_", raw.strip().lower()).strip("_-")
    if not name[:1].isalpha():
        name = f"step_{name}" if name else "step"
    return name[:63].rstrip("_-")


def _cell_tags(cell):
    tags = (cell.get("metadata") or {}).get("tags") or []
    return [tag for tag in tags if isinstance(tag, str)] if isinstance(tags, list) else []


def _parse_tags(tags, where):
    """Kale's tag language for one cell; tags of other tools are ignored."""
    parsed, steps = _Tags(), []
    for tag in tags:
        text = tag.strip()
        special = re.sub(r"[\s_]+", "-", text.lower())
        if special in _SPECIAL:
            if parsed.role in (None, "step"):  # as in Kale, a special tag decides the cell
                parsed.role = special
            continue
        key, _, value = (part.strip() for part in text.partition(":"))
        key = key.lower()
        if key in ("step", "block") and value.lower() in ("imports", "functions", "skip"):
            if parsed.role in (None, "step"):  # Kale reads `block:imports` as the `imports` tag
                parsed.role = value.lower()
        elif key in ("step", "block"):
            if value:
                steps.append(value)
        elif key == "prev" and value:
            parsed.prev.append(value)
        elif key == "limit":
            resource, _, amount = (part.strip() for part in value.partition(":"))
            parsed.options.setdefault("limit", {})[resource.lower()] = amount
        elif key in ("image", "cache") and value:
            parsed.options[key] = value
        elif key in ("annotation", "label") and value:
            parsed.options.setdefault(key, []).append(value)
    if len({step_name(step) for step in steps}) > 1:
        raise CellSyntaxError(
            f"{where}: tagged with several steps ({', '.join(steps)}); a cell belongs to one step. "
            "Keep one step: tag, or split the cell."
        )
    if steps and parsed.role is None:
        parsed.role, parsed.step = "step", steps[0]
    return parsed


def is_skipped(cell):
    """Whether a code cell is tagged `skip` (so its code is in no step, as Kale reads it)."""
    try:
        return _parse_tags(_cell_tags(cell), "cell").role == "skip"
    except CellSyntaxError:
        return False


def is_tagged(nb):
    """Whether any code cell carries a tag of Kale's language."""
    return any(
        _is_kale_tag(tag) for cell in nb["cells"] if cell.get("cell_type") == "code" for tag in _cell_tags(cell)
    )


# The type each of Kale's settings must have, and how to say it: a wrong one is an error, not a guess.
_SETTING_TYPES = {
    "pipeline_name": (str, "text"), "experiment_name": (str, "text"), "docker_image": (str, "text"),
    "base_image": (str, "text"), "experiment": ((dict, str), "an object with a name, or text"),
    "steps_defaults": ((list, dict, str), 'a list of tags like ["limit:cpu:2"]'),
    "enable_caching": (bool, "true or false"), "volumes": (list, "a list"),
}


def _settings(nb):
    """Kale's settings in the notebook metadata, checked: KfmagicError naming a setting of the wrong type."""
    metadata = nb.get("metadata") or {}
    settings = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise KfmagicError(
            f"The notebook metadata {METADATA_KEY} is {_short(settings)}, not an object of Kale's settings "
            '(e.g. {"pipeline_name": "iris", "steps_defaults": []}). Fix it in the notebook\'s metadata.'
        )
    for key, (types, said) in _SETTING_TYPES.items():
        value = settings.get(key)
        if value is not None and not isinstance(value, types):
            raise KfmagicError(_bad_setting(key, value, said))
    defaults = settings.get("steps_defaults")
    if isinstance(defaults, list) and not all(isinstance(tag, str) for tag in defaults):
        raise KfmagicError(_bad_setting("steps_defaults", defaults, 'a list of tags (text) like ["limit:cpu:2"]'))
    if isinstance(defaults, dict) and not all(isinstance(value, dict) for value in defaults.values()):
        raise KfmagicError(_bad_setting("steps_defaults", defaults, 'Kale\'s form {"limits": {"cpu": "2"}, "labels": {...}}'))
    return settings


def _bad_setting(key, value, said):
    return (
        f"The notebook metadata {METADATA_KEY}.{key} is {_short(value)}; Kale writes it as "
        f"{said}. Fix it in the notebook's metadata (or set it again in Kale's panel)."
    )


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _default_options(settings):
    """Kale's `steps_defaults` ("limit:cpu:2", ...) apply to every step, under the step's own tags."""
    defaults = settings.get("steps_defaults") or []
    if isinstance(defaults, dict):  # Kale's parsed form: {"limits": {...}, "annotations": {...}}
        return {
            "limit": dict(defaults.get("limits") or {}),
            **{kind: [f"{k}:{v}" for k, v in (defaults.get(f"{kind}s") or {}).items()] for kind in ("annotation", "label")},
        }
    if isinstance(defaults, str):
        defaults = [defaults]
    return _parse_tags(defaults, f"{METADATA_KEY}.steps_defaults").options


def _options_to_flags(options, step, found):
    """Kale limit/image/cache -> `%%step` options; what kfmagic cannot honour is a warning."""
    words = []
    for resource, amount in (options.get("limit") or {}).items():
        if resource == "cpu":
            words += ["--cpu", amount]
        elif resource == "memory":
            words += ["--memory", amount]
        elif _GPU_KEY_RE.search(resource):
            words += ["--gpu", amount] + (["--gpu-type", resource] if resource != "gpu" else [])
        else:
            found.append(
                f"step {step!r}: Kale tag limit:{resource}:{amount} is not applied: kfmagic sets cpu, memory and GPUs only."
            )
    if "image" in options:
        words += ["--image", options["image"]]
    cache = options.get("cache", "").lower()
    if cache in ("enabled", "disabled"):
        words.append("--cache" if cache == "enabled" else "--no-cache")
    elif cache:
        found.append(f"step {step!r}: Kale tag cache:{options['cache']} is not applied: use cache:enabled or cache:disabled.")
    for kind in ("annotation", "label"):
        for value in options.get(kind, []):
            found.append(f"step {step!r}: Kale tag {kind}:{value} is not applied: kfmagic sets no pod {kind}s.")
    return words


def _metric_names(text, where, found):
    """The variables a pipeline-metrics cell prints (`print(accuracy)`), as Kale reads them."""
    code = syntax.to_python(text)
    try:
        tree = ast.parse(code)
    except SyntaxError as error:
        found.append(f"{where} (pipeline-metrics): cannot be read ({error.msg}); its metrics are not reported.")
        return []
    except (MemoryError, RecursionError):  # Python's parser on very deep nesting
        found.append(f"{where} (pipeline-metrics): nested too deeply for Python's parser; its metrics are not reported.")
        return []
    names, lines = [], code.splitlines()
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None  # an assignment's value is no metric
        args = getattr(call, "args", None)
        if getattr(getattr(call, "func", None), "id", None) == "print" and args:
            names += [arg.id for arg in args if isinstance(arg, ast.Name)]
            if all(isinstance(arg, ast.Name) for arg in args):
                continue
        elif isinstance(call, ast.Name):
            names.append(call.id)
            continue
        found.append(
            f"{where} (pipeline-metrics): `{lines[node.lineno - 1].strip()}` reports no metric: as in Kale, "
            "write one variable per line, e.g. print(accuracy)."
        )
    return list(dict.fromkeys(names))


def translate(nb, default_name="pipeline"):
    """The kfmagic text of each cell of a Kale-tagged notebook, and what could not be kept."""
    found, renamed = [], set()
    settings = _settings(nb)
    defaults = _default_options(settings)
    if settings.get("enable_caching") is False:  # Kale's pipeline-wide switch
        defaults.setdefault("cache", "disabled")
    for kind in ("annotation", "label"):  # said once, not once per step
        for value in defaults.pop(kind, []):
            found.append(f"Kale's steps_defaults {kind}:{value} is not applied: kfmagic sets no pod {kind}s.")

    def kfmagic_name(raw):
        name = step_name(raw)
        if name != raw and raw not in renamed:
            renamed.add(raw)
            found.append(f"Kale step {raw!r} is named {name!r} (lowercase letters, digits, '-' and '_').")
        return name

    steps, metrics, declared = [], [], set()  # steps: _StepCell in notebook order
    block, texts = None, [None] * len(nb["cells"])
    for index, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        where, source = f"cell {index + 1}", syntax.cell_text(cell)
        tags = _parse_tags(_cell_tags(cell), where)
        if tags.role == "skip":
            continue
        if tags.role is not None:
            block = (tags.role, kfmagic_name(tags.step) if tags.step else None)
        if (tags.prev or tags.options) and (block is None or block[0] != "step"):
            found.append(f"{where}: its prev:/limit:/image:/cache: tags are not applied: the cell is not part of a step.")
        if block is None or (tags.role is None and not source.strip()):
            continue
        role, step = block
        if role == "step":
            options = tags.options
            if step not in declared:  # Kale's defaults go where the step is declared, under its own tags
                options = {**defaults, **options, "limit": {**defaults.get("limit", {}), **options.get("limit", {})}}
                declared.add(step)
            after = {kfmagic_name(prev): prev for prev in tags.prev if kfmagic_name(prev) != step}
            steps.append(_StepCell(index, step, list(after), options, continues=tags.role is None, prev=after))
        elif role == _METRICS:
            metrics += [(name, where) for name in _metric_names(source, where, found)]
        else:
            texts[index] = f"%%{'params' if role == _PARAMS else 'prelude'}\n{source}"

    _assign_metrics(steps, metrics, nb, texts, found)
    _drop_unknown_prev_of_continuations(steps, found)
    for cell in steps:
        words = [cell.step, *(["--after", *cell.after] if cell.after else [])]
        words += ["--metrics", *cell.metrics] if cell.metrics else []
        words += _options_to_flags(cell.options, cell.step, found)
        line = " ".join(_word(word) for word in words)
        texts[cell.index] = f"%%step {line}\n{syntax.cell_text(nb['cells'][cell.index])}"
    return Translation(_header(settings, default_name, found), texts, list(dict.fromkeys(found)))


@dataclass
class _StepCell:
    index: int
    step: str
    after: list
    options: dict
    metrics: list = field(default_factory=list)
    continues: bool = False  # untagged, or `block:` without a name: the cell continues the step before
    prev: dict = field(default_factory=dict)  # each step in `after` -> its prev: tag's name as written


def _drop_unknown_prev_of_continuations(steps, found):
    """Kale reads no `prev:` tag of a cell that continues a step (kfmagic keeps them): one naming no
    step of the notebook (`prev:pre`, a tag left half-typed) is dropped with a warning, not refused."""
    names = {cell.step for cell in steps}
    for cell in steps:
        unknown = [name for name in cell.after if name not in names] if cell.continues else []
        for name in unknown:
            found.append(
                f"cell {cell.index + 1}: tag prev:{cell.prev[name]} names no step of the notebook; as Kale does on a "
                f"cell that continues step {cell.step!r}, it is not applied."
            )
        cell.after = [name for name in cell.after if name not in unknown]


def _image(settings):
    """The steps' image: `docker_image` in Kale up to 0.7, `base_image` after."""
    return str(settings.get("docker_image") or settings.get("base_image") or "").strip()


def _word(value):
    """`value` as one word of a magic line (quoted when it holds spaces or quotes, as in a shell)."""
    return shlex.quote(str(value).strip())


def _assign_metrics(steps, metrics, nb, texts, found):
    """Each metric goes to the last step cell (notebook order) that assigns it, as Kale does; a
    pipeline parameter, to the last one whose code uses it (its run value is the metric)."""
    params = set()
    for text in texts:
        if text and text.startswith("%%params"):
            try:
                params.update(syntax.parse_cell(text).params)
            except CellSyntaxError:
                continue  # the plan reports it
    for name, where in metrics:
        for cell in reversed(steps):
            try:
                info = analyze(syntax.to_python(syntax.cell_text(nb["cells"][cell.index])))
            except (AnalysisError, SyntaxError):
                continue  # the plan reports it
            if name in info.assigns or (name in params and name in info.reads):
                if name not in cell.metrics:  # printed by two metrics cells: one metric
                    cell.metrics.append(name)
                break
        else:
            why = "no step uses that pipeline parameter" if name in params else "no step assigns it"
            found.append(f"{where} (pipeline-metrics): {name!r} is not reported as a metric: {why}.")


def _header(settings, default_name, found):
    name = step_name(settings.get("pipeline_name") or default_name)
    experiment = settings.get("experiment") or {}
    experiment = settings.get("experiment_name") or (experiment.get("name") if isinstance(experiment, dict) else experiment)
    line = f"%pipeline init {name}" + (f" --experiment {_word(experiment)}" if experiment else "")
    if _image(settings):
        line += f" --image {_word(_image(settings))}"
    if settings.get("volumes"):
        found.append(
            "Kale's volumes are not applied: kfmagic mounts no volumes from Kale's settings; "
            "add --volume to the steps that need one."
        )
    return f"%load_ext kfmagic\n{line}\n"


def convert(nb, default_name="pipeline"):
    """(kfmagic notebook, warnings): the same cells, each Kale-tagged code cell rewritten to magics."""
    import nbformat  # only here: reading needs none of it
    from nbformat.v4 import new_code_cell

    translation = translate(nb, default_name)
    out = nbformat.from_dict(copy.deepcopy(nb))
    for cell, text in zip(out.cells, translation.texts):
        if cell.get("cell_type") != "code":
            continue
        if text is not None:
            cell.source = text
        tags = [tag for tag in _cell_tags(cell) if not _is_kale_tag(tag)]
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.get("metadata", {}).pop("tags", None)
    header = new_code_cell(translation.header.rstrip("\n"))
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        del header["id"]  # files before nbformat 4.5 have no cell ids
    out.cells.insert(0, header)
    return out, translation.warnings


def _is_kale_tag(tag):
    text = tag.strip().lower()
    return re.sub(r"[\s_]+", "-", text) in _SPECIAL or text.partition(":")[0].strip() in _KALE_KEYS
