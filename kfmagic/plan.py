"""Registered cells -> a validated DAG: step order, and where each step's inputs come from.

Pure: no kernel, no files, no processes. Every problem is found here, before anything runs,
and reported together, each with a hint.
"""

import ast
import builtins
import difflib
from dataclasses import dataclass, field
from functools import lru_cache

from .analysis import AnalysisError, analyze
from .errors import CellSyntaxError, PlanError

# Names a step may read that no step provides: the step's runtime or Python supplies them.
RUNTIME_NAMES = frozenset({"get_ipython", "display", "In", "Out", "exit", "quit"})


@dataclass(frozen=True)
class CodePart:
    """One cell's code, with line numbers aligned to the cell as the user sees it."""

    code: str
    source: str
    label: str


@dataclass(frozen=True)
class StepPlan:
    name: str
    index: int  # position in notebook order
    parts: tuple
    after: tuple  # upstream steps named with --after
    upstream: tuple  # every upstream step, in plan order
    inputs: dict  # variable -> the step it comes from
    params: tuple  # parameters the step reads
    outputs: tuple  # variables it must save (read downstream, --outputs, --metrics)
    keep: tuple  # variables it saves if it can (a leaf step keeps what it assigns)
    assigns: tuple  # every variable its code assigns or changes in place
    metrics: tuple
    options: dict
    needed_by: dict = field(default_factory=dict)  # variable it saves -> the steps that read it, in plan order

    @property
    def inferred(self):
        """Upstream steps that data flow added (not named with --after)."""
        return tuple(name for name in self.upstream if name not in self.after)


@dataclass(frozen=True)
class Plan:
    name: str
    experiment: str | None
    steps: tuple  # topological order; ties keep notebook order
    prelude: tuple  # CodePart
    params: dict  # name -> default
    warnings: tuple = field(default=())

    def step(self, name):
        return next(step for step in self.steps if step.name == name)

    def downstream(self, name):
        """Every step that (transitively) depends on `name`."""
        found, frontier = set(), {name}
        while frontier:
            frontier = {step.name for step in self.steps if frontier & set(step.upstream)} - found
            found |= frontier
        return found

    def resolve_params(self, overrides):
        """Defaults with overrides applied; text values are parsed to the default's type."""
        values = dict(self.params)
        for name, value in overrides.items():
            if name not in self.params:
                close = difflib.get_close_matches(name, self.params, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                known = ", ".join(self.params) or "none (declare them in a %%params cell)"
                raise CellSyntaxError(f"--param {name}: no such parameter.{hint} Parameters: {known}.")
            values[name] = _coerce_param(name, value, self.params[name])
        return values


def _coerce_param(name, value, default):
    if not isinstance(value, str) or isinstance(default, str):
        parsed = value
    else:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
    if isinstance(default, bool) and isinstance(parsed, str) and parsed.lower() in ("true", "false"):
        parsed = parsed.lower() == "true"
    if isinstance(default, float) and type(parsed) is int:
        parsed = float(parsed)
    if type(parsed) is not type(default):
        raise CellSyntaxError(
            f"--param {name}={value!r}: expected a {type(default).__name__} like the default "
            f"{default!r}, got a {type(parsed).__name__}."
        )
    return parsed


@lru_cache(maxsize=1024)
def _analyze(code, functions=()):
    return analyze(code, functions)


@dataclass
class _Step:
    """What the planner learns about one step while it works."""

    name: str
    index: int
    cells: list
    reads: list = field(default_factory=list)
    changes: set = field(default_factory=set)  # assigned or mutated
    assigns: list = field(default_factory=list)
    after: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    metrics: list = field(default_factory=list)
    options: dict = field(default_factory=dict)  # every other magic option, merged over the cells
    star_imports: bool = False
    unreadable: bool = False  # a cell could not be analysed: what it provides is unknown
    read_at: dict = field(default_factory=dict)  # var -> (position in the notebook, label) of its first read
    positions: list = field(default_factory=list)  # of its cells in the notebook
    split_reported: set = field(default_factory=set)  # steps it was reported to be split around
    via: dict = field(default_factory=dict)  # a name read only by a prelude function it calls -> that function
    imported: set = field(default_factory=set)  # names its imports bind: modules, not data to keep


def build_plan(name, experiment, cells, explain_missing=None):
    """Plan the pipeline declared by `cells` (registry.RegisteredCell, notebook order)."""
    problems, warnings = [], []
    prelude = tuple(CodePart(c.spec.code, c.spec.source, c.label) for c in cells if c.spec.kind == "prelude")
    params = {}
    for cell in cells:
        if cell.spec.kind == "params":
            params.update(cell.spec.params)

    provided_by_prelude, prelude_star, functions = set(), [], {}
    prelude_reads, function_reads, top_reads = {}, {}, []
    for part in prelude:
        try:
            info = _analyze(part.code, tuple(functions.values()))
        except AnalysisError as error:
            problems.append(f"%%prelude ({part.label}): {error}")
            prelude_star.append(None)  # unreadable: it may provide any name
            continue
        provided_by_prelude.update(info.assigns)
        prelude_star.extend([*info.star_imports, *info.runs])
        prelude_reads.update(dict.fromkeys(info.reads))
        function_reads.update(info.function_reads)
        top_reads += [(part.label, name) for name in info.statement_reads]
        functions.update((function[0], function) for function in info.mutating_functions)

    steps = _collect_steps(cells, provided_by_prelude, problems, functions)
    if not prelude_star:
        problems += _prelude_needs(top_reads, provided_by_prelude, params, steps)
    _read_through_prelude_functions(steps, function_reads, provided_by_prelude)
    if not steps:
        problems.append("The pipeline has no steps: mark a cell with `%%step NAME` (see %%step?).")
        raise PlanError(problems)
    by_name = {step.name: step for step in steps}
    for step in steps:
        for upstream in step.after:
            if upstream == step.name:
                problems.append(f"Step {step.name!r}: --after {upstream} names the step itself.")
            elif upstream not in by_name:
                close = difflib.get_close_matches(upstream, by_name, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else f" Steps: {', '.join(by_name)}."
                problems.append(f"Step {step.name!r}: --after {upstream}: no such step.{hint}")

    after_ancestors = _closure({s.name: [u for u in s.after if u in by_name and u != s.name] for s in steps})

    inputs = {step.name: {} for step in steps}
    # The prelude runs in every step: the parameters it reads are every step's.
    step_params = {step.name: [v for v in prelude_reads if v in params] for step in steps}
    for step in steps:
        candidates = [
            other
            for other in steps
            if (other.index < step.index or other.name in after_ancestors[step.name]) and other is not step
        ]
        for var in step.reads:
            writers = [other for other in candidates if var in other.changes]
            if writers:
                inputs[step.name][var] = max(writers, key=lambda other: other.index).name
            elif var in params:
                step_params[step.name].append(var)
            elif var in provided_by_prelude or var in RUNTIME_NAMES or hasattr(builtins, var):
                continue
            elif prelude_star or step.star_imports or any(other.unreadable for other in steps):
                continue  # a star import or unreadable code may provide it; fix that first
            else:
                problem = _missing_name(step, var, steps, explain_missing)
                if problem:
                    problems.append(problem)

    for step in steps:
        for option, names in (("--outputs", step.outputs), ("--metrics", step.metrics)):
            for var in names:
                if var not in step.changes:
                    problems.append(
                        f"Step {step.name!r}: {option} {var}: the step's code never assigns {var!r}."
                    )

    upstream = {
        s.name: sorted((set(s.after) & set(by_name) | set(inputs[s.name].values())) - {s.name}) for s in steps
    }
    order = _topological(steps, upstream, problems)
    if problems:
        raise PlanError(problems)

    ancestors = _closure(upstream)
    for consumer, needs in inputs.items():
        for var, producer in needs.items():
            warnings.extend(_parallel_writers(consumer, var, producer, steps, ancestors))
    consumers = {}  # producer -> {var: [the steps that read it, in plan order]}
    for consumer in order:
        for var, producer in inputs[consumer].items():
            consumers.setdefault(producer, {}).setdefault(var, []).append(consumer)

    position = {name: i for i, name in enumerate(order)}
    planned = []
    for step_name in order:
        step = by_name[step_name]
        outputs = sorted(consumers.get(step_name, set())) + [
            v for v in step.outputs + step.metrics if v not in consumers.get(step_name, set())
        ]
        is_leaf = step_name not in {u for names in upstream.values() for u in names}
        keep = [v for v in step.assigns if v not in outputs and v not in step.imported] if is_leaf else []
        planned.append(
            StepPlan(
                name=step_name,
                index=step.index,
                parts=tuple(CodePart(c.spec.code, c.spec.source, c.label) for c in step.cells),
                after=tuple(dict.fromkeys(u for u in step.after if u in by_name)),
                upstream=tuple(sorted(upstream[step_name], key=position.get)),
                inputs=dict(inputs[step_name]),
                params=tuple(dict.fromkeys(step_params[step_name])),
                outputs=tuple(dict.fromkeys(outputs)),
                keep=tuple(keep),
                assigns=tuple(step.assigns),
                metrics=tuple(dict.fromkeys(step.metrics)),
                options=dict(step.options),
                needed_by=consumers.get(step_name, {}),
            )
        )
    return Plan(name, experiment, tuple(planned), prelude, params, tuple(dict.fromkeys(warnings)))


def _prelude_needs(top_reads, prelude_names, params, steps):
    """Names the prelude's own statements read that nothing there provides: it runs first in every
    step, before the step's inputs are loaded (a Kale `functions` cell computing from a step's data)."""
    found = []
    for label, name in top_reads:
        if name in prelude_names or name in params or name in RUNTIME_NAMES or hasattr(builtins, name):
            continue
        writers = [step.name for step in steps if name in step.changes]
        where = f"step {writers[0]!r} assigns it, but " if writers else ""
        found.append(
            f"%%prelude ({label}) reads {name!r}: {where}the prelude runs at the start of every step, before "
            "the step's inputs are loaded. Compute it in a step, or define it in the prelude."
        )
    return found


def _read_through_prelude_functions(steps, function_reads, prelude_names):
    """A step calling a prelude function reads the names the function's body reads (as Kale,
    which prepends its `functions` cells to each step, finds them): `def scaled(): return data * 2`
    in the prelude makes a step that calls `scaled()` read `data`."""
    needs = {}
    for name in function_reads:
        seen, todo = set(), [name]
        while todo:
            for read in function_reads.get(todo.pop(), ()):
                if read not in seen:
                    seen.add(read)
                    todo.append(read)
        needs[name] = [v for v in seen if v not in prelude_names and v != name]
    for step in steps:
        for function in [v for v in step.reads if v in needs and v in prelude_names]:
            for var in needs[function]:
                if var not in step.reads and var not in step.changes:
                    step.reads.append(var)
                    step.via[var] = function


def _collect_steps(cells, prelude_names, problems, functions):
    """Group step cells by name in notebook order and analyse each step's code as one.

    Calling a method on a prelude name (`np.zeros(3)`) is not a change worth marshalling: every
    step runs the prelude afresh, so only rebinding a prelude name makes a step its provider.
    A call to a function that changes its argument in place (`clean(df)`, defined in the prelude
    or an earlier cell) changes that argument.
    """
    steps, infos = {}, {}
    position = {id(cell): number for number, cell in enumerate(cells)}
    for cell in cells:
        if cell.spec.kind == "step":
            steps.setdefault(cell.spec.name, _Step(cell.spec.name, len(steps), [])).cells.append(cell)
            try:
                infos[id(cell)] = info = _analyze(cell.spec.code, tuple(functions.values()))
            except AnalysisError as error:
                infos[id(cell)] = error
                continue
            functions.update((function[0], function) for function in info.mutating_functions)
    for step in steps.values():
        step.positions = [position[id(cell)] for cell in step.cells]
        bound = set()
        for cell in step.cells:
            options = cell.spec.options
            step.after += options.get("after", [])
            step.outputs += [v for v in options.get("outputs", []) if v not in step.outputs]
            step.metrics += [v for v in options.get("metrics", []) if v not in step.metrics]
            _merge_options(step, cell, options, problems)
            info = infos[id(cell)]
            if isinstance(info, AnalysisError):
                problems.append(f"Step {step.name!r} ({cell.label}): {info}")
                step.unreadable = True
                continue
            step.star_imports = step.star_imports or bool(info.runs)  # `%run x.py` may bind any name
            for module in info.star_imports:
                step.star_imports = True
                problems.append(
                    f"Step {step.name!r} ({cell.label}): `from {module} import *` hides which names the "
                    "step defines. Import the names you use, or move the import to the %%prelude."
                )
            step.reads += [v for v in info.reads if v not in bound and v not in step.reads]
            for var in info.reads:
                step.read_at.setdefault(var, (position[id(cell)], cell.label))
            bound.update(info.assigns)
            step.imported.update(info.imported)
            mutates = [v for v in info.mutates if v not in prelude_names or v in bound]
            step.changes.update(info.assigns, mutates)
            step.assigns += [v for v in dict.fromkeys((*info.assigns, *mutates)) if v not in step.assigns]
    return list(steps.values())


_LIST_OPTIONS = ("after", "outputs", "metrics")


def _merge_options(step, cell, options, problems):
    """A step's options are the union of its cells' options; two cells may not disagree."""
    for key, value in options.items():
        if key in _LIST_OPTIONS or value is None or value == []:  # not given; False and 0 are values
            continue
        if isinstance(value, list):
            step.options.setdefault(key, [])
            step.options[key] += [item for item in value if item not in step.options[key]]
        elif step.options.setdefault(key, value) != value:
            problems.append(
                f"Step {step.name!r} ({cell.label}): --{key.replace('_', '-')} {value!r} contradicts "
                f"{step.options[key]!r} given on another cell of the step; give it once."
            )


def _missing_name(step, var, steps, explain_missing):
    reads = f"calls {step.via[var]}() of the %%prelude, which reads" if var in step.via else "reads"
    later = [other for other in steps if other.index > step.index and var in other.changes]
    at, label = step.read_at.get(var, (None, None))
    before = [other for other in later if at is not None and any(position < at for position in other.positions)]
    if before and len(step.positions) > 1:  # a step of several cells, some above the writer, some below
        other = before[0]
        if other.name in step.split_reported:
            return None  # one message says it for every name
        step.split_reported.add(other.name)
        return (
            f"Step {step.name!r} reads {var!r} in {label}, below a cell of step {other.name!r} that assigns it, "
            f"but {step.name!r} begins at {step.cells[0].label}, above {other.name!r}: a step runs as one, "
            f"before any step that begins below it. Give {label} a step name of its own, or move "
            f"{step.cells[0].label} below the cells of {other.name!r}."
        )
    later = [other.name for other in later]
    if later:
        return (
            f"Step {step.name!r} {reads} {var!r}, which only the later step {later[0]!r} assigns. "
            f"Move the cell of {later[0]!r} above {step.name!r}, or add `--after {later[0]}` to {step.name!r}."
        )
    where = explain_missing(var) if explain_missing else None
    hint = (
        f" {where}" if where else " Assign it in an earlier step, import or define it in the %%prelude, "
        "or declare it in %%params."
    )
    return f"Step {step.name!r} {reads} {var!r}, but no step, prelude or parameter provides it.{hint}"


def _closure(edges):
    """name -> every name reachable through `edges` (name -> direct predecessors)."""
    result = {}

    def visit(name, trail):
        if name in result:
            return result[name]
        found = set()
        for other in edges.get(name, ()):
            if other not in trail:
                found |= {other} | visit(other, trail | {other})
        result[name] = found
        return found

    for name in edges:
        visit(name, {name})
    return result


def _topological(steps, upstream, problems):
    """Kahn's order preferring notebook order; a cycle is reported with its steps."""
    remaining = {s.name: set(upstream[s.name]) for s in steps}
    order = []
    while remaining:
        ready = [s.name for s in steps if s.name in remaining and not remaining[s.name]]
        if not ready:
            cycle = _find_cycle(remaining)
            problems.append(
                "The steps form a cycle: " + " -> ".join(cycle) + ". Each needs the one before it "
                "(through --after or the data it reads); remove an --after or move a cell."
            )
            return order
        order.append(ready[0])
        del remaining[ready[0]]
        for needs in remaining.values():
            needs.discard(ready[0])
    return order


def _find_cycle(remaining):
    path, node = [], next(iter(remaining))
    while node not in path:
        path.append(node)
        node = next(iter(sorted(remaining[node])))
    cycle = path[path.index(node):]
    return [*reversed(cycle), cycle[-1]]


def _parallel_writers(consumer, var, producer, steps, ancestors):
    for other in steps:
        if (
            other.name not in (producer, consumer)
            and var in other.changes
            and other.name in ancestors[consumer]
            and other.name not in ancestors[producer]
            and producer not in ancestors[other.name]
        ):
            yield (
                f"Steps {other.name!r} and {producer!r} both change {var!r} and may run in parallel; "
                f"{consumer!r} gets it from {producer!r} (the later cell). Add `--after` between them "
                "to make the order explicit."
            )
