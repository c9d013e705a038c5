"""Hyperparameter sweeps: what `--param NAME=SPEC` asks for, the combinations a grid or a random
search makes of it, which steps the swept parameters reach, and the result (`Sweep`) ordered by a metric.

Pure: no kernel, no files, no processes. Running the combinations is the backends' work
(`local.run_sweep`, and the compiled `dsl.ParallelFor` pipeline of `compiler`); the registry joins them.

A SPEC is a list of values (`C=0.1,1,10`, commas inside brackets or quotes do not split) or, for a
number, a range `LOW..HIGH` (`depth=2..8`: integers, both ends included; `lr=1e-4..1e-1:log`:
drawn evenly on a log scale), which only a random search can draw from. Every value is typed like the
parameter's default in `%%params`, by the plan's own coercion. A parameter given one value is fixed,
not swept: it reaches no step that it would not reach in a plain run with `--param`.
"""

import itertools
import math
import random
import secrets
from dataclasses import dataclass, field

from .errors import CellSyntaxError, KfmagicError

SIGNIFICANT_DIGITS = 4  # of a float drawn from a range: enough for a hyperparameter, short to read
_RANDOM_ATTEMPTS = 50  # draws per wanted combination before a small space is taken as exhausted
_BRACKETS = {"[": "]", "{": "}", "(": ")"}


@dataclass(frozen=True)
class Choice:
    """A parameter's values listed one by one."""

    name: str
    values: tuple

    def draw(self, rng):
        return rng.choice(self.values)


@dataclass(frozen=True)
class Span:
    """A parameter's range: ints or floats from `low` to `high` (both included), evenly or on a log scale."""

    name: str
    low: object
    high: object
    log: bool
    text: str  # as the user wrote it, for messages

    def draw(self, rng):
        low, high = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        if isinstance(self.low, int) and not self.log:
            return rng.randint(self.low, self.high)
        value = rng.uniform(low, high)
        value = math.exp(value) if self.log else value
        if isinstance(self.low, int):
            return min(max(round(value), self.low), self.high)
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def parse_specs(specs, plan):
    """{name: SPEC text} (from `--param NAME=SPEC`) -> [Choice | Span], each value typed like the
    parameter's default; CellSyntaxError naming the parameter for an unknown name, an empty list or
    a bad range."""
    if not specs:
        raise CellSyntaxError("A sweep needs the values to try: --param NAME=V1,V2,... (repeatable), e.g. --param C=0.1,1,10.")
    parsed = []
    for name, text in specs.items():
        if name not in plan.params:
            plan.resolve_params({name: text})  # says "no such parameter", with the close name
        span = _span(name, text, plan.params[name])
        parsed.append(span if span is not None else _choice(name, text, plan))
    return parsed


def _choice(name, text, plan):
    if isinstance(text, (list, tuple)):  # from Python: the values themselves
        if not text:
            raise CellSyntaxError(f"sweep: parameter {name!r} has an empty list of values; give at least one.")
        return Choice(name, tuple(_distinct(plan.resolve_params({name: value})[name] for value in text)))
    words = [word.strip() for word in split_values(text)]
    if not any(words):
        raise CellSyntaxError(
            f"--param {name}={text}: no values. List them (--param {name}=1,2,3) or, for a number, give a range "
            f"for --random to draw from (--param {name}=1..10)."
        )
    if not all(words):
        raise CellSyntaxError(f"--param {name}={text}: an empty value between commas; remove the extra comma.")
    values = [plan.resolve_params({name: word})[name] for word in words]
    return Choice(name, tuple(_distinct(values)))


def _distinct(values):
    """`values` without repeats (1 and 1.0 are one value), in their order."""
    seen = []
    for value in values:
        if not any(type(value) is type(known) and value == known for known in seen):
            seen.append(value)
    return seen


def split_values(text):
    """`text` split at the commas that are not inside brackets or quotes (`[1,2],[3]` is two values)."""
    words, depth, quote, start = [], [], None, 0
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _BRACKETS:
            depth.append(_BRACKETS[char])
        elif depth and char == depth[-1]:
            depth.pop()
        elif char == "," and not depth:
            words.append(text[start:index])
            start = index + 1
    return [*words, text[start:]]


def _span(name, text, default):
    """The range `text` gives for a numeric parameter, or None when it is not one (a list)."""
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if not isinstance(text, str) or not numeric or ".." not in text:
        return None
    bounds, _, scale = text.partition(":")
    low_text, _, high_text = bounds.partition("..")
    kind = type(default)
    how = f"write LOW..HIGH with two {kind.__name__}s (e.g. --param {name}=" + ("2..8" if kind is int else "0.001..0.1:log") + ")"
    try:
        low, high = _number(low_text, kind), _number(high_text, kind)
    except (ValueError, OverflowError):
        raise CellSyntaxError(f"--param {name}={text}: not a range of {kind.__name__}s like the default {default!r}; {how}.") from None
    if scale not in ("", "log"):
        raise CellSyntaxError(f"--param {name}={text}: unknown scale {scale!r} after the range; the one scale is :log.")
    if not low < high:
        raise CellSyntaxError(f"--param {name}={text}: the range is empty or reversed; give LOW..HIGH with LOW below HIGH.")
    if scale == "log" and low <= 0:
        raise CellSyntaxError(f"--param {name}={text}: a :log range needs numbers above 0 (a log scale has no 0).")
    return Span(name, low, high, scale == "log", text)


def _number(text, kind):
    """The `kind` (int or float) written in `text`; ValueError for anything else (2.5 for an int)."""
    number = int(text) if kind is int else float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def combinations(specs, random_count=None, seed=None):
    """Every combination of a grid (`random_count` None) or `random_count` distinct random draws
    (`seed` makes them the same every time): [{name: value}], in the order they run."""
    if random_count is None:
        ranged = [spec for spec in specs if isinstance(spec, Span)]
        if ranged:
            spec = ranged[0]
            raise CellSyntaxError(
                f"--param {spec.name}={spec.text} is a range: a grid needs the values listed (--param "
                f"{spec.name}={spec.low},{spec.high}), or draw from the range with --random N."
            )
        return [dict(zip([s.name for s in specs], values)) for values in itertools.product(*(s.values for s in specs))]
    if random_count < 1:
        raise CellSyntaxError(f"--random {random_count}: draw at least one combination.")
    rng = random.Random(seed)
    drawn = []
    for _ in range(random_count * _RANDOM_ATTEMPTS):
        combination = {spec.name: spec.draw(rng) for spec in specs}
        if combination not in drawn:
            drawn.append(combination)
        if len(drawn) == random_count:
            break
    return drawn


def swept(combos):
    """The parameters whose value differs between combinations (a parameter given one value is fixed)."""
    names = dict.fromkeys(name for combo in combos for name in combo)
    return [name for name in names if len({repr(combo[name]) for combo in combos}) > 1]


def per_combination(plan, swept_names):
    """The steps (plan order) that run once per combination: those reading a swept parameter (the
    %%prelude's parameters are every step's) and every step after one of them. The others are shared.
    A swept parameter that no step reads is an error: every combination would compute the same."""
    if not swept_names:
        raise CellSyntaxError(
            "Every --param of the sweep has one value, so there is nothing to sweep: give a parameter two or more "
            "values (--param C=0.1,1,10), or a range with --random N; for one run, use `run --param`."
        )
    for name in swept_names:
        if not any(name in step.params for step in plan.steps):
            raise CellSyntaxError(
                f"--param {name}: no step reads the parameter, so every combination would compute the same; "
                "sweep a parameter a step uses."
            )
    reached = []
    for step in plan.steps:
        if set(step.params) & set(swept_names) or set(step.upstream) & set(reached):
            reached.append(step.name)
    return reached


def outline(plan, per_steps, count):
    """The plan of the sweep in one line: "3 steps shared (load, prep, split), 2 steps x 12 combinations (train, score)"."""
    shared = [step.name for step in plan.steps if step.name not in per_steps]
    parts = []
    if shared:
        parts.append(f"{_count(len(shared), 'step')} shared ({', '.join(shared)})")
    parts.append(f"{_count(len(per_steps), 'step')} x {_count(count, 'combination')} ({', '.join(per_steps)})")
    return ", ".join(parts)


def _count(number, noun):
    return f"{number} {noun}{'' if number == 1 else 's'}"


def choose_metric(plan, metric=None, per_steps=None):
    """(step, name) of the metric that orders the combinations: `metric` ("STEP.NAME"), else the one
    metric the pipeline reports. A sweep needs one; with several, the user says which. With `per_steps`
    (those run per combination), a metric of a shared step, the same in every combination, is refused."""
    chosen = _metric(plan, metric)
    if per_steps is not None and chosen[0] not in per_steps:
        raise CellSyntaxError(
            f"--metric {'.'.join(chosen)}: step {chosen[0]!r} reads no swept parameter, so it runs once and every "
            f"combination reports the same value; order by a metric of {', '.join(per_steps)}."
        )
    return chosen


def _metric(plan, metric):
    reported = [f"{step.name}.{name}" for step in plan.steps for name in step.metrics]
    if metric is None:
        if len(reported) == 1:
            return tuple(reported[0].split(".", 1))
        if not reported:
            raise KfmagicError(
                "A sweep orders its combinations by a metric, and no step reports one: add `--metrics NAME` to "
                "the %%step that computes it (e.g. `%%step train --metrics accuracy`)."
            )
        raise CellSyntaxError(
            f"--metric: the pipeline reports {len(reported)} metrics ({', '.join(reported)}); say which orders the "
            f"combinations, e.g. --metric {reported[0]} --maximize (or --minimize)."
        )
    step, dot, name = metric.partition(".")
    if not dot or f"{step}.{name}" not in reported:
        known = ", ".join(reported) or "none (add --metrics NAME to a %%step)"
        raise CellSyntaxError(f"--metric {metric}: no step reports that metric; write STEP.NAME. Metrics: {known}.")
    return step, name


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs, decided before anything starts: every parameter's value in each combination
    (`values`), the swept parameters, the steps run per combination and the shared ones, the metric
    (step, name), and the seed of a random search."""

    values: list
    swept: list
    per_combination: list
    shared: list
    metric: tuple
    seed: int | None
    wanted: int | None = None  # combinations `--random` asked for (the values may hold fewer)

    @property
    def combinations(self):
        """Each combination's swept values."""
        return [{name: values[name] for name in self.swept} for values in self.values]

    def describe(self, plan, maximize):
        """The line said before the sweep starts."""
        order = "highest" if maximize else "lowest"
        drawn = f"; random search, seed {self.seed} (--seed {self.seed} draws them again)" if self.seed is not None else ""
        if self.wanted is not None and self.wanted > len(self.values):
            drawn += f"; --random {self.wanted}: the values hold only {len(self.values)} distinct combinations"
        return (
            f"sweep of {plan.name}: {outline(plan, self.per_combination, len(self.values))}; "
            f"by {'.'.join(self.metric)}, {order} first{drawn}"
        )


def plan_sweep(plan, params, random_count=None, seed=None, metric=None):
    """The SweepPlan of `plan` for `params` ({name: SPEC text or list of values}): a grid, or
    `random_count` combinations drawn with `seed` (one is chosen if not given). Every problem is one
    CellSyntaxError (or KfmagicError), raised before anything runs."""
    specs = parse_specs(params, plan)
    if random_count is None and seed is not None:
        raise CellSyntaxError(f"--seed {seed}: a seed is for --random N; a grid has no randomness.")
    if random_count is not None and seed is None:
        seed = secrets.randbelow(2**31)
    drawn = combinations(specs, random_count, seed)
    names = swept(drawn)
    per_steps = per_combination(plan, names)
    chosen = choose_metric(plan, metric, per_steps)
    shared = [step.name for step in plan.steps if step.name not in per_steps]
    return SweepPlan([plan.resolve_params(values) for values in drawn], names, per_steps, shared, chosen, seed, random_count)


@dataclass
class Sweep:
    """The runs of a sweep, one per combination, and their order by the chosen metric.

    `runs[i]` ran `combinations[i]`; `rows()` puts those that report the metric first, best first,
    then the others (failed, stopped) in their own order; `best` is the best combination's Run.
    """

    pipeline: str
    combinations: list  # [{param: value}]
    runs: list  # one Run per combination (CANCELED if the sweep was stopped first)
    metric: tuple  # (step, name)
    maximize: bool = True
    params: list = field(default_factory=list)  # the swept parameters (the table's columns)
    shared: tuple = ()  # the steps run once for every combination
    seed: int | None = None  # of a random search
    state: str = "SUCCEEDED"  # CANCELED when it was stopped before every combination ended

    def value(self, index):
        """The metric combination `index` reported, or None."""
        step, name = self.metric
        found = self.runs[index].steps.get(step)
        value = found.metrics.get(name) if found is not None and found.state == "SUCCEEDED" else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None

    def order(self):
        """Indexes of the combinations, best first; those without the metric last, in their order."""
        measured = [i for i in range(len(self.runs)) if self.value(i) is not None]
        measured.sort(key=self.value, reverse=self.maximize)
        return measured + [i for i in range(len(self.runs)) if self.value(i) is None]

    def finished(self):
        """Indexes of the combinations whose run ended SUCCEEDED."""
        return [i for i, run in enumerate(self.runs) if run.state == "SUCCEEDED"]

    @property
    def best(self):
        """The Run of the combination with the best metric (`.load`, `.metrics`)."""
        return self.runs[self._best()]

    @property
    def best_params(self):
        """The swept parameters' values in the best combination."""
        return dict(self.combinations[self._best()])

    def _best(self):
        ordered = self.order()
        if not ordered or self.value(ordered[0]) is None:
            raise KfmagicError(
                f"sweep.best: no combination reported {'.'.join(self.metric)} (each failed or was stopped); "
                "see the sweep's table for why."
            )
        return ordered[0]

    def rows(self):
        """[{param: value, ..., metric: value or None, "state", "run"}] best first (see `order`)."""
        name = ".".join(self.metric)
        return [
            {**self.combinations[i], name: self.value(i), "state": self.runs[i].state, "run": self.runs[i].id}
            for i in self.order()
        ]

    def plot(self):
        """A matplotlib figure: the metric against each swept parameter (imported only when asked for)."""
        from .display import sweep_figure

        return sweep_figure(self)

    def _repr_html_(self):
        from .display import sweep_html

        return sweep_html(self)

    def __repr__(self):
        from .display import sweep_text

        return sweep_text(self)
