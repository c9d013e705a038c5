"""A saved `.ipynb` file -> the same `registry.Pipeline` the kernel builds, without running a cell.

The one place that turns a file into a pipeline (CLI, drift check, Kale notebooks). Each code
cell's text goes through the kernel's own parser (`syntax.parse_cell`) and `Pipeline.add`, so a
file and a kernel that ran it top to bottom hold the same registry. A notebook tagged for
Kubeflow Kale is first translated to the same magics (`kfmagic.kale`), cell by cell.
"""

import dataclasses
import json
import os
import re
import warnings


from . import kale, syntax
from .errors import KfmagicError
from .registry import Pipeline
from .syntax import cell_text

_INIT_LINE_RE = re.compile(r"^%pipeline\s+init(\s|$)")


def read(path):
    """The notebook at `path` (nbformat v4, as a dict), or a KfmagicError that says what is wrong with it.

    A v4 file is its JSON, checked here: importing nbformat (and its JSON schema machinery) costs
    more than everything else a `kfmagic check` does, so it reads only other versions.
    """
    if not os.path.exists(path):
        raise KfmagicError(f"{path}: no such file.")
    if os.path.isdir(path):
        raise KfmagicError(f"{path} is a directory; give the path of a .ipynb file.")
    data = _json(path)
    if isinstance(data, dict) and data.get("nbformat") == 4 and isinstance(data.get("cells"), list):
        problem = _structure_problem(data)
        if problem:
            raise KfmagicError(f"{path}{problem}")
        return data
    import nbformat

    try:
        with warnings.catch_warnings():  # missing cell ids and the like: not the user's problem here
            warnings.simplefilter("ignore")
            nb = nbformat.read(path, as_version=4)
    except OSError as error:
        raise KfmagicError(f"{path}: cannot be read ({error.strerror or error}).") from None
    except Exception as error:  # nbformat raises JSON, schema and conversion errors of many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        problem = _structure_problem(_json(path)) or f" is not a Jupyter notebook nbformat can read: {first}"
        raise KfmagicError(f"{path}{problem}") from None
    problem = _structure_problem(nb)
    if problem:
        raise KfmagicError(f"{path}{problem}")
    return nb


def _json(path):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (ValueError, RecursionError, OSError):  # not JSON, not UTF-8, nested too deeply: nbformat's words say it
        return None


def _structure_problem(data):
    """What makes `data` (a notebook's JSON) unusable as cells of text, said after its path; None if
    nothing (or nothing more precise than nbformat's words)."""
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return None
    for number, cell in enumerate(data["cells"], 1):
        if not isinstance(cell, dict):
            return f": {label(number)} is {_kind(cell)}, not a cell (an object with cell_type, metadata and source)."
        source = cell.get("source")
        odd = [line for line in source if not isinstance(line, str)] if isinstance(source, list) else []
        if odd or not isinstance(source, (str, list)):
            shown = f"a list holding {_kind(odd[0])}" if odd else _kind(source)
            return (
                f": {label(number)}'s source is {shown}, not text. A cell's source is a string or a list of "
                "strings; fix that cell in a text editor or remove it."
            )
    return None


def _kind(value):
    """A JSON value's kind, in JSON's words."""
    kinds = ((dict, "an object"), (list, "a list"), (str, "text"), (bool, "a boolean"), (type(None), "null"))
    return next((said for kind, said in kinds if isinstance(value, kind)), "a number")


def label(number):
    return f"cell {number}"


def load(path, nb=None):
    """(Pipeline, warnings) declared by the notebook file at `path` (`nb`: its content, when
    already read); nothing is executed."""
    nb = read(path) if nb is None else nb
    default_name = kale.step_name(os.path.splitext(os.path.basename(path))[0])
    pipeline, found = from_notebook(nb, default_name)
    pipeline.notebook_path = os.path.abspath(path)
    return pipeline, found


def from_notebook(nb, default_name="pipeline"):
    """(Pipeline, warnings) for an in-memory notebook: kfmagic magics, else Kale tags."""
    texts = [cell_text(cell) if cell.get("cell_type") == "code" else None for cell in nb["cells"]]
    found = []
    tagged = is_kale(nb)
    if tagged:
        translation = kale.translate(nb, default_name)
        texts, found = [translation.header, *translation.texts], list(translation.warnings)
        numbers = [None, *range(1, len(nb["cells"]) + 1)]
    else:
        numbers = list(range(1, len(nb["cells"]) + 1))
    pipeline = Pipeline()
    for number, text in zip(numbers, texts):
        if text:
            _add_cell(pipeline, text, number, nb["cells"][number - 1] if number else {}, tagged)
    unmarked = [number for number, text in zip(numbers, texts) if number and not _is_marked(text)]
    pipeline.explain_missing = _explainer(nb, unmarked, tagged)
    return pipeline, found


def is_kale(nb):
    """Whether the notebook declares its pipeline with Kale tags (and none of kfmagic's magics)."""
    return not uses_magics(nb) and kale.is_tagged(nb)


def uses_magics(nb):
    """Whether any code cell is marked with one of kfmagic's cell magics (then Kale tags are ignored)."""
    return any(_is_marked(cell_text(cell)) for cell in nb["cells"] if cell.get("cell_type") == "code")


def _is_marked(text):
    return bool(text) and syntax.split_magic_line(text) is not None


def _add_cell(pipeline, text, number, cell, tagged=False):
    """Register one cell's kfmagic text. `tagged`: the text is a Kale cell under the magic line
    its tags became; the spec then keeps the cell's own text, so line numbers are the cell's."""
    where = label(number) if number else "the Kale notebook's settings"
    try:
        spec = syntax.parse_cell(text)
        if spec is not None and tagged:
            spec = dataclasses.replace(spec, source=cell_text(cell), code=spec.code[1:])
        if spec is None:
            for line in text.splitlines():
                if _INIT_LINE_RE.match(line.strip()):
                    options = vars(syntax.parse_pipeline_line(line.strip()[len("%pipeline"):]))
                    del options["command"]
                    pipeline.init(**options)
            return
    except KfmagicError as error:
        message = str(error)
        if tagged:  # the pipeline-parameters cell's own line numbers, one less than under `%%params`
            message = re.sub(r"^%%params line (\d+)", lambda m: f"pipeline-parameters line {int(m[1]) - 1}", message)
        raise type(error)(f"{where}: {message}") from None
    pipeline.add(spec, cell_id=cell.get("id"), label=where, position=number)


def _explainer(nb, unmarked, tagged=False):
    """Where a name no step provides comes from in the file: a code cell that is not in the pipeline.

    `tagged`: the pipeline comes from Kale tags, so the fix is said with tags.
    """

    code = [(number, cell_text(nb["cells"][number - 1])) for number in sorted(unmarked)
            if nb["cells"][number - 1].get("cell_type") == "code"]

    def explain(name):
        number = syntax.last_assigner(name, code)
        if number is None:
            return None
        if not tagged:
            fix = "mark it with %%step (or move it to the %%prelude or %%params)."
        elif kale.is_skipped(nb["cells"][number - 1]):
            fix = "it is tagged skip. Tag it step:NAME, imports or functions instead."
        else:
            fix = "no Kale tag puts it in a step. Tag it step:NAME, imports or functions."
        return f"The notebook's {label(number)} assigns it, but that cell is not part of the pipeline: {fix}"

    return explain
