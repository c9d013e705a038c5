"""Registered cells -> a validated DAG: step order, and where each step's inputs come from.

Pure: no kernel, no files, no processes. Every problem is found here, before anything runs,
and reported together, each with a hint.
"""

import ast
import builtins
import difflib
import functools
from dataclasses import dataclass, field

from .analysis import AnalysisError, analyze
from .component import COMBINATION_ARG, DISPLAY_OUTPUT, METRICS_OUTPUT
from .errors import CellSyntaxError, PlanError
from .files import file_edges

# Names a step may read that no step provides: the step's runtime or Python supplies them.
RUNTIME_NAMES = frozenset({"get_ipython", "display", "In", "Out", "exit", "quit"})
# The compiled pipeline's task that hands every step kfmagic's runtime and the prelude (compiler.py).
RUNTIME_TASK = "kfmagic_runtime"
# Names of a compiled step's own inputs and outputs (component.py): no variable may take them.
RESERVED = (METRICS_OUTPUT, DISPLAY_OUTPUT, RUNTIME_TASK, COMBINATION_ARG)
# The compiled pipeline's own parameters, with a run store (compiler.py): no parameter may take them.
STORE_PARAM, RUN_ID_PARAM = "kfmagic_store", "kfmagic_run_id"
# The global random generators a step's runtime watches (runtime.random_states), by the module whose
# `seed` seeds them, and how messages call them.
GENERATORS = {"numpy.random": "numpy", "random": "random"}
GENERATOR_NAMES = {"numpy": "numpy's global random generator (np.random)", "random": "the random module's generator"}


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
    seeds: dict = field(default_factory=dict)  # global random generator its code seeds -> the seeding call

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
    seeded: dict = field(default_factory=dict)  # global random generator the prelude seeds -> the seeding call
    prelude_params: tuple = ()  # the parameters the %%prelude reads (every step is given them)

    def step(self, name):
        return self._by_name[name]

    @functools.cached_property
    def _by_name(self):
        return {step.name: step for step in self.steps}

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


def _a(noun):
    """`noun` with its indefinite article: "an int", "a float"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


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
            f"--param {name}={value!r}: expected {_a(type(default).__name__)} like the default "
            f"{default!r}, got {_a(type(parsed).__name__)}."
        )
    return parsed


@functools.lru_cache(maxsize=1024)
def _analyze(code, functions=()):
    return analyze(code, functions)


@dataclass(kw_only=True)
class _Definitions:
    """What code defines that does its work when called later: functions, classes (their
    methods), variables holding lambdas, functions or instances (analysis.CodeInfo's owners)."""

    body_reads: dict = field(default_factory=dict)  # owner -> names its body reads
    body_changes: dict = field(default_factory=dict)  # owner -> {name its body changes: "assign" | "mutate"}
    carries: dict = field(default_factory=dict)  # variable -> (names stored in its value, names called)
    classes: set = field(default_factory=set)
    aliases: dict = field(default_factory=dict)  # name bound by an import -> the dotted path it names
    seed_calls: list = field(default_factory=list)  # (owner or "", dotted callee, text): analysis.CodeInfo's

    def add(self, info):
        """Take a cell's definitions; a name it binds anew is no longer what it was."""
        for name in info.assigns:
            for records in (self.body_reads, self.body_changes, self.carries):
                records.pop(name, None)
            self.classes.discard(name)
        self.body_reads.update((owner, names) for owner, names in info.function_reads)
        self.body_changes.update((owner, dict(changes)) for owner, changes in info.function_changes)
        self.carries.update((target, (stored, called)) for target, stored, called in info.carries)
        self.classes.update(info.classes)
        self.aliases.update(info.import_paths)
        self.seed_calls += info.seed_calls

    def seeds(self, owner, aliases):
        """{global random generator: the call seeding it} of what `owner` ("": the code's own
        statements) calls; a name is resolved with `aliases` (the prelude's) under this code's own."""
        found = {}
        for _, dotted, text in [call for call in self.seed_calls if call[0] == owner]:
            head, _, rest = dotted.partition(".")
            path = {**aliases, **self.aliases}.get(head)
            if path is None:
                continue  # not an import: `rng.seed(0)` seeds a generator of the notebook's own
            generator = GENERATORS.get((f"{path}.{rest}" if rest else path).rpartition(".")[0])
            if generator:  # `np.random.seed` is numpy.random.seed; `seed` may be random.seed
                found.setdefault(generator, text)
        return found

    def owners(self):
        """The names defined here whose use runs code written here (see `called`)."""
        return {*self.body_reads, *self.body_changes}

    def called(self, name, owners, classes):
        """(names read, {name: how} changed) when code calls or uses `name` defined here.

        A variable holding a function or an instance (`ops = {'f': show}`, `m = Model()`) reads what
        that function or class reads; `owners` and `classes` are every such name of the notebook.
        """
        reads = dict.fromkeys(self.body_reads.get(name, ()))
        stored, called = self.carries.get(name, ((), ()))
        reads.update(dict.fromkeys(n for n in stored if n in owners))
        reads.update(dict.fromkeys(n for n in called if n in classes))
        return reads, self.body_changes.get(name, {})


@dataclass
class _Prelude(_Definitions):
    """What the planner learns about the %%prelude."""

    names: set = field(default_factory=set)  # what it binds
    unknown: bool = False  # a star import or `%run` it cannot read, or code it cannot analyse: may bind anything
    params_read: dict = field(default_factory=dict)  # names its code reads anywhere (ordered set)
    statement_reads: list = field(default_factory=list)  # (label, name) read by its statements as they run
    functions: dict = field(default_factory=dict)  # name -> its analysis.mutating_functions entry
    generators: set = field(default_factory=set)  # names it binds to random generators of its own


@dataclass
class _Step(_Definitions):
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
    via: dict = field(default_factory=dict)  # a name read only by a function it calls -> (function, where it is defined)
    bound: set = field(default_factory=set)  # names its code binds (not only changes in place)
    imported: set = field(default_factory=set)  # names its imports bind: modules, not data to keep
    assigned_by_calls: set = field(default_factory=set)  # names a function it calls assigns (`global mode`)


def build_plan(name, experiment, cells, explain_missing=None, star_names=None):
    """Plan the pipeline declared by `cells` (registry.RegisteredCell, notebook order).

    `explain_missing(name)`: where a name no step provides came from, if the caller knows.
    `star_names(module)`: the names `from module import *` binds, or None if unknown (modules.star_names).
    """
    problems, warnings = [], []
    prelude_parts = tuple(CodePart(c.spec.code, c.spec.source, c.label) for c in cells if c.spec.kind == "prelude")
    params = {}
    for cell in cells:
        if cell.spec.kind == "params":
            params.update(cell.spec.params)
    prelude = _analyze_prelude(prelude_parts, star_names, problems)
    steps = _collect_steps(cells, prelude, problems)
    if not prelude.unknown:
        problems += _prelude_needs(prelude.statement_reads, prelude.names, params, steps)
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

    inputs, step_params = _wire(steps, prelude, params, after_ancestors, explain_missing, problems)
    for step in steps:
        for option, names in (("--outputs", step.outputs), ("--metrics", step.metrics)):
            for var in names:
                if var in params and option == "--metrics":
                    step_params[step.name].append(var)  # its run value is the metric
                elif var not in step.changes:
                    problems.append(
                        f"Step {step.name!r}: {option} {var}: the step's code never assigns {var!r}."
                    )

    shared_files = file_edges([(s.name, [c.spec.code for c in s.cells]) for s in steps])
    upstream = {
        s.name: sorted((set(s.after) & set(by_name) | set(inputs[s.name].values()) | shared_files[s.name]) - {s.name})
        for s in steps
    }
    order = _topological(steps, upstream, problems)
    if problems:
        raise PlanError(problems)

    ancestors = _closure(upstream)
    for consumer, needs in inputs.items():
        for var, producer in needs.items():
            warnings.extend(_parallel_writers(consumer, var, producer, steps, ancestors, after_ancestors[consumer]))
    consumers = {}  # producer -> {var: [the steps that read it, in plan order]}
    for consumer in order:
        for var, producer in inputs[consumer].items():
            consumers.setdefault(producer, {}).setdefault(var, []).append(consumer)

    position = {name: i for i, name in enumerate(order)}
    seeds = {step.name: _step_seeds(step, prelude, steps) for step in steps}
    planned = []
    for step_name in order:
        step = by_name[step_name]
        outputs = sorted(consumers.get(step_name, set())) + [
            v for v in step.outputs + step.metrics if v not in consumers.get(step_name, set()) and v in step.changes
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
                seeds=seeds[step_name],
            )
        )
    problems = _kubeflow_problems(planned, params)
    if problems:
        raise PlanError(problems)
    return Plan(
        name, experiment, tuple(planned), prelude_parts, params, tuple(dict.fromkeys(warnings)),
        seeded=prelude.seeds("", {}), prelude_params=tuple(name for name in prelude.params_read if name in params),
    )


def _step_seeds(step, prelude, steps):
    """{generator: call} of the global random generators a step seeds: in its own statements, or in
    a function of the notebook that it calls (`set_seed(42)`)."""
    found = step.seeds("", prelude.aliases)
    for definer in (prelude, *steps):
        for name in step.reads:
            for generator, call in definer.seeds(name, prelude.aliases).items():
                found.setdefault(generator, call)
    return found


def random_draw_warnings(plan, moved):
    """What differs from the notebook because every step starts from the global random generators
    as the prelude leaves them, while top to bottom a step continues from where the steps above it
    left them. `moved`: {step: the generators its run left in another state than it found them}
    (runtime.random_states); who seeds what, and the notebook order, are the plan's.

    A step's numbers differ when it draws without seeding first, after a step above it moved the
    generator, once something seeded it (the prelude, or a step above): unseeded, they are random
    both ways. Steps that draw nothing are not affected, so only steps that drew are named.
    """
    found = []
    for generator, said in GENERATOR_NAMES.items():
        seeded = plan.seeded.get(generator) and f"the %%prelude: {plan.seeded[generator]}"
        mover, diverged = None, {}  # mover: the last step above that left the generator elsewhere
        for step in sorted(plan.steps, key=lambda step: step.index):
            drew = generator in moved.get(step.name, ())
            if generator in step.seeds:
                seeded = f"step {step.name!r}: {step.seeds[generator]}"
                mover = step.name if drew or generator not in plan.seeded else None
                continue
            if drew and seeded and mover:
                diverged.setdefault(seeded, []).append(f"{step.name!r} (after {mover!r})")
            mover = step.name if drew else mover
        start = "which starts from the %%prelude's seed" if generator in plan.seeded else "where it is not seeded"
        for seeder, steps in diverged.items():
            names = ", ".join(steps)
            many = len(steps) > 1
            found.append(
                f"Step{'s' * many} {names} drew random numbers from {said}, seeded by {seeder}, after a step "
                "above drew from it: top to bottom a step continues from where the steps above left the generator, "
                f"but each step of the pipeline runs in a process of its own, {start}. So "
                f"{'these steps' if many else 'the step'} drew other numbers than the notebook does, and what "
                f"{'they' if many else 'it'} computed from them may differ. Seed the generator at the top of each "
                "step that draws, or give what it calls a random_state, and both draw the same numbers."
            )
    return found


def kfp_name(step_name):
    """The task name kfp gives a step's component (it turns '_' into '-')."""
    return step_name.replace("_", "-")


def kept(step):
    """What a last step keeps, less names Kubeflow cannot take (`_`, `_tmp`): keeping is best effort."""
    return [var for var in step.keep if not var.startswith("_") and var not in RESERVED]


def arguments(step):
    """{input variable or parameter: the argument of the step's Kubeflow component for it}.

    A step that changes a value it receives (`data.append(4)`) passes it on under the same name,
    but a KFP component cannot have an input and an output of one name: that input gets `_in`.
    """
    outputs = {*step.outputs, *kept(step)}
    return {name: f"{name}_in" if name in outputs else name for name in (*step.inputs, *step.params)}


def _kubeflow_problems(steps, params):
    """What the compiled pipeline could not be: reported by check and every runner alike, so a
    notebook that runs here also compiles."""
    problems, seen = [], {}
    for name in (STORE_PARAM, RUN_ID_PARAM):
        if name in params:
            problems.append(f"Parameter {name!r}: the name is kfmagic's own pipeline parameter; rename it.")
    for step in steps:
        other = seen.setdefault(kfp_name(step.name), step.name)
        if kfp_name(step.name) == kfp_name(RUNTIME_TASK):
            problems.append(f"Step {step.name!r}: the name is kfmagic's own task in Kubeflow; rename the step.")
        elif other != step.name:
            problems.append(
                f"Steps {other!r} and {step.name!r} both become the Kubeflow task {kfp_name(step.name)!r} "
                "('_' and '-' are the same there): rename one."
            )
        for var in dict.fromkeys([*step.inputs, *step.params, *step.outputs]):
            if var in RESERVED or var.startswith("_kfm"):
                problems.append(f"Step {step.name!r}: the variable name {var!r} is reserved by kfmagic; rename it.")
            elif var.startswith("_"):
                problems.append(
                    f"Step {step.name!r} passes {var!r} on or receives it, but Kubeflow names of inputs and outputs "
                    "must begin with a letter; rename the variable."
                )
        clash = sorted(set(arguments(step).values()) & {*step.outputs, *kept(step)})
        if clash:
            problems.append(
                f"Step {step.name!r}: {', '.join(clash)} would name both an input and an output of its Kubeflow "
                "component; rename the variable."
            )
    return problems


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


def _analyze_prelude(parts, star_names, problems):
    """What the %%prelude binds, reads and defines. A star import binds what the module's source
    exports (`star_names`); one that cannot be read, a `%run`, or unreadable code may bind anything."""
    prelude = _Prelude()
    for part in parts:
        try:
            info = _analyze(part.code, tuple(prelude.functions.values()))
        except AnalysisError as error:
            problems.append(f"%%prelude ({part.label}): {error}")
            prelude.unknown = True
            continue
        prelude.names.update(info.assigns)
        prelude.generators = prelude.generators - set(info.assigns) | set(info.generators)
        for module in info.star_imports:
            exported = star_names(module) if star_names else None
            prelude.unknown = prelude.unknown or exported is None
            prelude.names.update(exported or ())
        prelude.unknown = prelude.unknown or bool(info.runs)
        prelude.add(info)
        prelude.params_read.update(dict.fromkeys(info.reads))
        for names in prelude.body_reads.values():  # a prelude function may read a parameter whichever step calls it
            prelude.params_read.update(dict.fromkeys(names))
        prelude.statement_reads += [(part.label, name) for name in info.statement_reads]
        prelude.functions.update((function[0], function) for function in info.mutating_functions)
    return prelude


def _wire(steps, prelude, params, after_ancestors, explain_missing, problems):
    """For each step, where each name it reads comes from: ({step: {var: producer}}, {step: [params]}).

    A name comes from the latest step before it (in notebook order, or an --after ancestor) that
    assigns or changes it; else a parameter, the prelude, Python. Calling a function (or using a
    class or a variable holding functions) defined in a step or the prelude reads what its body
    reads, from wherever those names come from at that point, and changes what its body changes:
    the step that calls `add(v)` (whose body does `items.append(v)`) is the one that changes items.
    Steps are wired in notebook order, so such changes are known before later steps are wired.
    """
    classes = prelude.classes.union(*(s.classes for s in steps))
    owners = _owners([prelude, *steps], classes)
    inputs = {step.name: {} for step in steps}
    # The prelude runs in every step: the parameters it reads are every step's.
    step_params = {step.name: [v for v in prelude.params_read if v in params] for step in steps}
    unknown_source = prelude.unknown or any(other.unreadable for other in steps)
    for step in steps:
        candidates = [
            other
            for other in steps
            if (other.index < step.index or other.name in after_ancestors[step.name]) and other is not step
        ]
        for var in step.reads:  # grows as calls are followed
            writers = [other for other in candidates if var in other.changes]
            if writers:
                source = max(writers, key=lambda other: other.index)
                inputs[step.name][var] = source.name
            elif var in params:
                step_params[step.name].append(var)
                continue
            elif var in prelude.names:
                source = prelude
            elif var in RUNTIME_NAMES or hasattr(builtins, var) or unknown_source or step.star_imports:
                continue  # Python's, or a star import or unreadable code may provide it: fix that first
            elif var in step.assigned_by_calls:
                continue  # `setup()` then `print(mode)`: the function the step calls gives it (read before
                # the call, it fails in the notebook alike)
            else:
                problem = _missing_name(step, var, steps, explain_missing)
                if problem:
                    problems.append(problem)
                continue
            _call_through(step, var, source, owners, classes, prelude.names)
    return inputs, step_params


def _owners(definitions, classes):
    """Every name of the notebook whose use runs notebook code: functions, classes, variables
    holding lambdas, and variables holding any of these (`ops = {'f': show}`, `m = Model()`)."""
    owners = set().union(*(defs.owners() for defs in definitions))
    carries = [item for defs in definitions for item in defs.carries.items()]
    grown = True
    while grown:
        found = {target for target, (stored, called) in carries if owners.intersection(stored) or classes.intersection(called)}
        grown = not found <= owners
        owners |= found
    return owners


def _call_through(step, name, source, owners, classes, prelude_names):
    """`step` uses `name`, defined by `source` (a step or the prelude): what it reads, the step
    reads (unless the step sets it itself); what it changes, the step changes."""
    reads, changes = source.called(name, owners, classes)
    where = "the %%prelude" if isinstance(source, _Prelude) else f"step {source.name!r}"
    for var in reads:
        if var not in step.reads and var not in step.changes and var != name:
            step.reads.append(var)
            step.via[var] = (name, where)
    for var, how in changes.items():
        if how == "assign" or var not in prelude_names:
            step.changes.add(var)
            step.assigns += [var] if var not in step.assigns else []
        if how == "assign":
            step.assigned_by_calls.add(var)


def _collect_steps(cells, prelude, problems):
    """Group step cells by name in notebook order and analyse each step's code as one.

    Calling a method on a prelude name (`np.zeros(3)`) is not a change worth marshalling: every
    step runs the prelude afresh, so only rebinding a prelude name makes a step its provider; an
    import binding it to what the prelude imports (`import numpy as np` again) does not rebind it.
    Nor is calling one on a name steps bind only by importing it (`_drop_changes_to_imports`).
    A call to a function that changes its argument in place (`clean(df)`, defined in the prelude
    or an earlier cell) changes that argument.
    """
    functions, prelude_names = dict(prelude.functions), prelude.names
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
    # A generator of the notebook's own changes as it draws, made in the prelude too: the step that
    # draws passes it on (in place of the prelude's fresh one), as top to bottom it draws on.
    made = {name for info in infos.values() if not isinstance(info, AnalysisError) for name in info.generators}
    generators = prelude.generators | (made - prelude_names)
    for step in steps.values():
        step.positions = [position[id(cell)] for cell in step.cells]
        bound, reimported = set(), set()
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
            step.imported.update(info.imported)
            mutates = [v for v in info.mutates if v not in prelude_names or v in bound - reimported]
            mutates += [v for v in info.called_with if v in generators and v not in mutates]
            for var in [v for v in info.reads if v in bound]:  # a function an earlier cell of the step defined
                changed = _call_within(step, var, bound)  # what it assigns is bound by now
                mutates += [v for v in changed if v not in prelude_names or v in bound - reimported]
            again = {name for name, path in info.import_paths if prelude.aliases.get(name) == path}
            reimported = reimported - set(info.assigns) | again
            assigned = [v for v in info.assigns if v not in again]
            bound.update(info.assigns)
            step.bound.update(assigned)
            step.add(info)
            step.changes.update(assigned, mutates)
            step.assigns += [v for v in dict.fromkeys((*assigned, *mutates)) if v not in step.assigns]
    _drop_changes_to_imports(steps.values())
    if prelude.unknown:  # what the prelude's star imports bind is unknown: a name that only has methods
        bound_anywhere = set().union(*(step.bound for step in steps.values()))  # called is one of them
        for step in steps.values():
            for var in step.changes - step.bound - bound_anywhere:
                step.changes.discard(var)
                step.assigns.remove(var)
    return list(steps.values())


def _drop_changes_to_imports(steps):
    """A name that steps bind only by importing it (a module, a class or function of one) travels by
    reference: what a step does to it (`np.allclose(a, b)` as a statement, `plt.plot(x)`) reaches no
    other step, so it does not make that step the name's provider, nor chain the steps that use it."""
    imported = set().union(*(step.imported for step in steps))
    rebound = set().union(*(step.bound - step.imported for step in steps))
    for step in steps:
        for var in (step.changes - step.bound) & (imported - rebound):
            step.changes.discard(var)
            step.assigns.remove(var)


def _call_within(step, name, bound):
    """A cell uses `name`, which an earlier cell of the same step defined: the step reads what its
    body reads and is not bound yet; returns what its body changes in place."""
    changed, todo, seen = [], [name], set()
    while todo:
        owner = todo.pop()
        if owner in seen:
            continue
        seen.add(owner)
        reads, changes = step.called(owner, step.owners(), step.classes)
        todo += list(reads)
        step.reads += [v for v in reads if v not in bound and v not in step.reads]
        changed += list(changes)
        assigned = [v for v, how in changes.items() if how == "assign"]
        bound.update(assigned)
        step.bound.update(assigned)
        step.assigned_by_calls.update(assigned)
    return changed


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
    reads = "calls {}() of {}, which reads".format(*step.via[var]) if var in step.via else "reads"
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


def _parallel_writers(consumer, var, producer, steps, ancestors, named_after):
    """A step the consumer names with --after (`named_after`: reached through --after edges) also
    changes `var`, in parallel with the step it comes from: the user may expect that one's. Where
    no --after says so, the notebook's order alone decides, as top to bottom: nothing to warn of."""
    for other in steps:
        if (
            other.name not in (producer, consumer)
            and var in other.changes
            and other.name in named_after
            and other.name not in ancestors[producer]
            and producer not in ancestors[other.name]
        ):
            yield (
                f"Steps {other.name!r} and {producer!r} both change {var!r} and may run in parallel; "
                f"{consumer!r} gets it from {producer!r} (the later cell). Add `--after` between them "
                "to make the order explicit."
            )
