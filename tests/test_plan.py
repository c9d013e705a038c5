"""The planner: data edges, --after edges, and every plan-time error with its hint."""

import pytest

from kfmagic.errors import CellSyntaxError, PlanError
from kfmagic.plan import random_draw_warnings
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell


def pipeline_of(*sources, explain=None):
    pipeline = Pipeline(explain_missing=explain)
    for number, source in enumerate(sources, 1):
        pipeline.add(parse_cell(source), label=f"cell {number}")
    return pipeline


def problems(*sources, **kwargs):
    with pytest.raises(PlanError) as caught:
        pipeline_of(*sources, **kwargs).plan()
    return caught.value.problems


def test_inputs_come_from_the_latest_earlier_writer_and_order_follows_data():
    plan = pipeline_of(
        "%%step a\nx = 1\ny = 2",
        "%%step b\nx = y + 1",
        "%%step c\nprint(x, y)",
    ).plan()
    assert [s.name for s in plan.steps] == ["a", "b", "c"]
    assert plan.step("c").inputs == {"x": "b", "y": "a"}
    assert plan.step("c").upstream == ("a", "b")
    assert plan.step("a").outputs == ("y",)  # a's x is overwritten by b before anyone reads it
    assert plan.step("b").outputs == ("x",)


def test_in_place_mutation_makes_a_step_the_provider():
    plan = pipeline_of(
        "%%step make\nitems = []",
        "%%step grow\nitems.append(1)",
        "%%step use\nprint(len(items))",
    ).plan()
    assert plan.step("use").inputs == {"items": "grow"}
    assert plan.step("grow").inputs == {"items": "make"}


def test_changes_through_aliases_and_functions_make_a_step_the_provider():
    plan = pipeline_of(
        "%%prelude\ndef add_ratio(df):\n    df['r'] = df['a'] / df['b']",
        "%%step load\ntrain, test = {}, {}",
        "%%step loop\nfor ds in [train, test]:\n    ds['c'] = 1",  # Kale's titanic example
        "%%step helper\nadd_ratio(test)",  # a prelude function that changes its argument
        "%%step use\nprint(train, test)",
    ).plan()
    assert plan.step("use").inputs == {"train": "loop", "test": "helper"}
    assert plan.step("helper").inputs == {"test": "loop"}


def test_steps_that_only_use_values_of_method_calls_read_in_parallel():
    plan = pipeline_of(
        "%%step load\nX = [[1.0, 2.0]]",
        "%%step stats\nm = X.mean()",  # the value is used: X is only read
        "%%step report\nprint(X.sum())",
    ).plan()
    assert plan.step("stats").inputs == {"X": "load"} and plan.step("report").inputs == {"X": "load"}
    assert plan.step("stats").upstream == ("load",) and plan.step("report").upstream == ("load",)
    assert plan.step("load").outputs == ("X",) and plan.step("stats").outputs == ()


def test_a_leaf_does_not_keep_what_it_imports():
    plan = pipeline_of(
        "%%step a\nx = 1",
        "%%step b\nimport numpy as np\nfrom math import floor",
        "%%step b\nimport os.path\ny = np.array([x])\nz = floor(1.5)",
    ).plan()
    assert plan.step("b").keep == ("y", "z") and plan.step("b").assigns == ("np", "floor", "os", "y", "z")


def test_a_leaf_keeps_each_variable_once():
    plan = pipeline_of("%%step a\nm = f = []", "%%step b\nm.append(1)\nm = [m]\nm.append(2)\nf.sort()").plan()
    assert plan.step("b").keep == ("m", "f")


def test_a_step_split_around_its_producer_is_one_clear_problem():
    # kubeflow-kale's examples/base/Example.ipynb: the first and the last cell share a step name
    found = problems(
        "%%step evaluation\ndata = [1, 2]",
        "%%step training\nmodel = sum(data)\nscore = 1",
        "%%step evaluation\nprint(model, score)",
    )
    assert found == [
        "Step 'evaluation' reads 'model' in cell 3, below a cell of step 'training' that assigns it, but "
        "'evaluation' begins at cell 1, above 'training': a step runs as one, before any step that begins "
        "below it. Give cell 3 a step name of its own, or move cell 1 below the cells of 'training'."
    ]


def test_a_prelude_function_reads_what_its_body_reads_and_the_prelude_reads_params():
    plan = pipeline_of(
        "%%prelude\nimport math\nrandom_seed = SEED\ndef scaled():\n    return [v * FACTOR for v in data] + helper()",
        "%%prelude\ndef helper():\n    return extra",
        "%%params\nSEED = 1\nFACTOR = 2",
        "%%step load\ndata = [1, 2]\nextra = [3]",
        "%%step other\nz = 1",
        "%%step use\nout = scaled()",
    ).plan()
    assert plan.step("use").inputs == {"data": "load", "extra": "load"}
    assert plan.step("use").params == ("SEED", "FACTOR")  # the prelude runs in every step
    assert plan.step("other").params == ("SEED", "FACTOR") and plan.step("other").inputs == {}
    assert problems("%%prelude\ndef f():\n    return data", "%%step use\nout = f()") == [
        "Step 'use' calls f() of the %%prelude, which reads 'data', but no step, prelude or parameter provides "
        "it. Assign it in an earlier step, import or define it in the %%prelude, or declare it in %%params."
    ]


def test_the_prelude_cannot_read_what_a_step_computes():
    assert problems(
        "%%prelude\nimport math",
        "%%step a\ndata = [1, 2]",
        "%%prelude\nn = len(data)\ndef f():\n    return data",
        "%%step b\ny = n + f()",
    ) == [
        "%%prelude (cell 3) reads 'data': step 'a' assigns it, but the prelude runs at the start of every step, "
        "before the step's inputs are loaded. Compute it in a step, or define it in the prelude."
    ]


def test_after_edges_are_kept_without_data_and_marked_explicit():
    plan = pipeline_of("%%step a\nx = 1", "%%step b\nopen('flag', 'w')", "%%step c --after b\nprint(x)").plan()
    c = plan.step("c")
    assert c.upstream == ("a", "b") and c.after == ("b",) and c.inferred == ("a",)


def test_after_can_name_a_step_registered_later():
    plan = pipeline_of("%%step report --after train\nprint('done')", "%%step train\nmodel = 1").plan()
    assert [s.name for s in plan.steps] == ["train", "report"]


def test_independent_steps_have_no_edge_and_keep_notebook_order():
    plan = pipeline_of("%%step a\nx = 1", "%%step b\ny = x", "%%step c\nz = x").plan()
    assert plan.step("b").upstream == ("a",) and plan.step("c").upstream == ("a",)
    assert [s.name for s in plan.steps] == ["a", "b", "c"]


def test_prelude_params_builtins_and_runtime_names_are_not_inputs():
    plan = pipeline_of(
        "%%prelude\nimport math\ndef helper(v):\n    return v * 2",
        "%%params\nrate = 0.5\nname = 'x'",
        "%%step a\nresult = helper(math.floor(rate * len(name)))\ndisplay(result)\nprint(sorted([3, 1]))",
    ).plan()
    step = plan.step("a")
    assert step.inputs == {} and step.params == ("rate", "name")
    assert plan.params == {"rate": 0.5, "name": "x"}


def test_prelude_method_calls_do_not_make_a_step_a_provider():
    plan = pipeline_of("%%prelude\nimport random", "%%step a\nrandom.seed(1)", "%%step b\nv = random.random()").plan()
    assert plan.step("b").inputs == {} and plan.step("b").upstream == ()


def test_a_function_of_a_step_calling_a_method_of_a_prelude_name_makes_no_provider():
    plan = pipeline_of(  # PythonDataScienceHandbook 05.10: make_hello() draws with plt and closes its figure
        "%%prelude\nimport matplotlib.pyplot as plt\nmode = 'a'",
        "%%step hello\ndef make_hello():\n    fig, ax = plt.subplots()\n    plt.close(fig)\n    return 1",
        "%%step hello\nX = make_hello()",
        "%%step setter\ndef set_mode():\n    global mode\n    mode = 'b'\nset_mode()",
        "%%step plot\nplt.plot([X])\nprint(mode)",
    ).plan()
    assert plan.step("plot").inputs == {"X": "hello", "mode": "setter"}  # plt is the prelude's; mode was rebound


def test_a_step_over_several_cells_reads_what_its_earlier_cells_assign():
    plan = pipeline_of(
        "%%step load\nraw = [1, 2]",
        "%%step prep\ncleaned = [v for v in raw]",
        "%%step other\nunrelated = 1",
        "%%step prep --outputs total\ntotal = sum(cleaned)",
    ).plan()
    prep = plan.step("prep")
    assert len(prep.parts) == 2 and prep.inputs == {"raw": "load"}
    assert "total" in prep.outputs and "cleaned" in prep.keep


def test_leaf_steps_keep_everything_they_assign_others_only_what_is_read():
    plan = pipeline_of("%%step a\nx = 1\nscratch = 2", "%%step b\ny = x + 1\nz = 3").plan()
    assert plan.step("a").outputs == ("x",) and plan.step("a").keep == ()
    assert plan.step("b").keep == ("y", "z")


def test_every_problem_is_reported_at_once():
    found = problems("%%step a --after nowhere\nx = missing_one", "%%step b\ny = missing_two")
    assert len(found) == 3
    assert any("--after nowhere: no such step" in p for p in found)
    assert any("'missing_one'" in p for p in found) and any("'missing_two'" in p for p in found)


def test_unknown_after_suggests_the_close_name():
    [problem] = problems("%%step train_model\nm = 1", "%%step report --after train_modle\nprint(1)")
    assert "Step 'report': --after train_modle: no such step. Did you mean 'train_model'?" == problem


CYCLE = (
    "The steps form a cycle: b -> a -> b. Each needs the one before it (through --after or the data it reads); "
    "remove an --after or move a cell."
)


def test_cycle_names_its_steps():
    assert problems("%%step a --after b\nx = 1", "%%step b --after a\ny = 2") == [CYCLE]


def test_cycle_through_data_and_after():
    assert problems("%%step a --after b\nx = 1", "%%step b\ny = x") == [CYCLE]


def test_name_only_a_later_step_provides():
    [problem] = problems("%%step report\nprint(model)", "%%step train\nmodel = 'svm'")
    assert "Step 'report' reads 'model', which only the later step 'train' assigns" in problem
    assert "Move the cell of 'train' above 'report'" in problem and "--after train" in problem


def test_name_nothing_provides_with_and_without_a_kernel_hint():
    [plain] = problems("%%step a\nprint(df)")
    assert "Step 'a' reads 'df', but no step, prelude or parameter provides it." in plain
    assert "%%prelude" in plain
    [hinted] = problems("%%step a\nprint(df)", explain=lambda name: f"The kernel has {name} from In [3].")
    assert hinted.endswith("The kernel has df from In [3].")


def test_parallel_writers_of_one_name_warn_which_wins():
    plan = pipeline_of(
        "%%step left\nconfig = {'side': 'l'}",
        "%%step right\nconfig = {'side': 'r'}",
        "%%step merge --after left\nprint(config)",
    ).plan()
    assert plan.step("merge").inputs == {"config": "right"}
    [warning] = plan.warnings
    assert "'left' and 'right' both change 'config'" in warning and "gets it from 'right'" in warning


def test_star_import_in_a_step_is_an_error_but_allowed_in_the_prelude():
    [problem] = problems("%%step a\nfrom math import *\nv = floor(1.5)")
    assert "`from math import *`" in problem and "%%prelude" in problem
    plan = pipeline_of("%%prelude\nfrom math import *", "%%step a\nv = floor(1.5)").plan()
    assert plan.step("a").inputs == {}


def test_outputs_and_metrics_must_be_assigned_by_the_step():
    found = problems("%%step a --outputs ghost --metrics acc\nx = 1")
    assert "Step 'a': --outputs ghost: the step's code never assigns 'ghost'." in found
    assert "Step 'a': --metrics acc: the step's code never assigns 'acc'." in found


def test_syntax_error_in_a_step_names_step_cell_and_line():
    [problem] = problems("%%step a\nx = 1\ny = (")
    assert problem.startswith("Step 'a' (cell 1): line 3")


def test_no_steps():
    [problem] = problems("%%prelude\nimport os")
    assert "no steps" in problem and "%%step NAME" in problem


def test_after_itself():
    [problem] = problems("%%step a --after a\nx = 1")
    assert "--after a names the step itself" in problem


def test_param_overrides_are_typed_by_their_defaults():
    plan = pipeline_of("%%params\nrate = 0.5\nepochs = 3\nname = 'x'\nflag = True\nlayers = [1, 2]", "%%step a\nv = 1").plan()
    assert plan.resolve_params({"rate": "1", "epochs": "7", "name": "42", "flag": "false", "layers": "[3]"}) == {
        "rate": 1.0, "epochs": 7, "name": "42", "flag": False, "layers": [3]
    }
    with pytest.raises(CellSyntaxError, match=r"--param epochs='many': expected an int like the default 3, got a str"):
        plan.resolve_params({"epochs": "many"})
    with pytest.raises(CellSyntaxError, match=r"--param rat: no such parameter. Did you mean 'rate'\?"):
        plan.resolve_params({"rat": "1"})


def test_rerunning_a_cell_replaces_it():
    pipeline = Pipeline()
    pipeline.add(parse_cell("%%step a\nx = 1"), cell_id="c1")
    pipeline.add(parse_cell("%%step b\ny = x"), cell_id="c2")
    pipeline.add(parse_cell("%%step a\nx = 2"), cell_id="c1")
    assert [c.spec.source for c in pipeline.cells] == ["%%step a\nx = 2", "%%step b\ny = x"]
    pipeline.add(parse_cell("%%step b\ny = x"))  # no cell id: known by its text
    pipeline.add(parse_cell("%%step b\ny = x"))
    assert len(pipeline.cells) == 3
    pipeline.forget_cell("c1")
    assert [c.spec.name for c in pipeline.cells] == ["b", "b"]


def test_conflicting_options_over_cells_of_one_step():
    pipeline = Pipeline()
    for source in ("%%step a\nx = 1", "%%step a\ny = 2"):
        pipeline.add(parse_cell(source))
    pipeline.cells[1].spec.options["image"] = "python:3.12"
    pipeline.cells[0].spec.options["image"] = "python:3.11"
    with pytest.raises(PlanError, match="contradicts"):
        pipeline.plan()


def test_show_has_a_table_and_a_dag_as_text_and_as_svg():
    view = pipeline_of(
        "%%params\nrate = 1", "%%step a\nx = rate", "%%step b\ny = x", "%%step c\nz = x", "%%step d --after b\nprint(z)"
    ).show()
    text = repr(view)
    assert "d     b, c*" in text and "z <- c" in text and "params: rate=1" in text
    assert "[1] a\n[2] b  <- a*\n    c  <- a*\n[3] d  <- b, c*" in text
    page = view._repr_html_()
    assert page.count("<rect") == 4 and page.count("<line") == 4 and "stroke-dasharray" in page  # b -> d is --after


def test_param_overrides_read_booleans_as_written_and_leave_text_parameters_alone():
    plan = pipeline_of("%%params\nflag = False\nmode = 'fast'", "%%step a\nv = (flag, mode)").plan()
    for written, value in (("true", True), ("TRUE", True), ("True", True), ("False", False)):
        assert plan.resolve_params({"flag": written})["flag"] is value
    assert plan.resolve_params({"mode": "true"})["mode"] == "true"  # a text parameter takes the text
    with pytest.raises(CellSyntaxError) as caught:
        plan.resolve_params({"flag": "yes"})
    assert str(caught.value) == "--param flag='yes': expected a bool like the default False, got a str."


def test_an_unknown_param_lists_the_parameters_there_are():
    plan = pipeline_of("%%params\nrate = 1\nepochs = 2", "%%step a\nv = rate + epochs").plan()
    with pytest.raises(CellSyntaxError) as caught:
        plan.resolve_params({"zzz": "1"})
    assert str(caught.value) == "--param zzz: no such parameter. Parameters: rate, epochs."
    with pytest.raises(CellSyntaxError) as caught:
        pipeline_of("%%step a\nv = 1").plan().resolve_params({"rate": "1"})
    assert str(caught.value) == "--param rate: no such parameter. Parameters: none (declare them in a %%params cell)."


def test_a_function_that_changes_a_global_makes_each_step_that_calls_it_the_provider():
    plan = pipeline_of(
        "%%prelude\ndef add(v):\n    items.append(v)",
        "%%step make\nitems = []",
        "%%step grow\nadd(1)",
        "%%step use\nprint(items)",
    ).plan()
    assert plan.step("use").inputs == {"items": "grow"} and plan.step("grow").inputs == {"items": "make"}
    assert plan.step("grow").outputs == ("items",)


def test_a_prelude_name_is_provided_by_a_step_that_rebinds_it_through_a_function_not_one_that_changes_it():
    plan = pipeline_of(
        "%%prelude\ncounts = {}\ndef bump(k):\n    counts[k] = 1\ndef reset():\n    global counts\n    counts = {'reset': 1}",
        "%%step a\nbump('x')",
        "%%step b\nreset()",
        "%%step c\nbump('y')",
        "%%step d\nprint(counts)",
    ).plan()
    assert plan.step("d").inputs == {"counts": "b"}
    assert plan.step("b").assigns == ("counts",) and plan.step("a").assigns == () and plan.step("c").assigns == ()


def test_a_variable_holding_a_function_reads_what_the_function_reads_where_it_is_called():
    plan = pipeline_of(
        "%%prelude\ndef report():\n    return total",
        "%%step load\ntotal = 1",
        "%%step pick\nhandler = report",
        "%%step use\nout = handler()",
    ).plan()
    assert plan.step("use").inputs == {"handler": "pick", "total": "load"}


def test_an_instance_of_a_prelude_class_reads_what_its_methods_read_where_it_is_used():
    plan = pipeline_of(
        "%%prelude\nclass Model:\n    def fit(self):\n        return len(data)",
        "%%step load\ndata = [1]",
        "%%step make\nmodel = Model()",
        "%%step train\nscore = model.fit()",
    ).plan()
    assert plan.step("train").inputs == {"model": "make", "data": "load"}


def test_a_function_rebound_later_in_its_step_is_no_longer_what_later_steps_call():
    plan = pipeline_of(
        "%%step define\ndef helper(v):\n    return data",
        "%%step define\nhelper = len",
        "%%step use\nn = helper([1])",
    ).plan()
    assert plan.step("use").inputs == {"helper": "define"}
    classes = pipeline_of(
        "%%step define\nclass Model:\n    def fit(self):\n        return data",
        "%%step define\nModel = dict",
        "%%step make\nm = Model()",
        "%%step use\nm.fit()",
    ).plan()
    assert classes.step("use").inputs == {"m": "make"}


def test_a_step_that_sets_what_a_function_reads_before_calling_it_needs_no_input():
    plan = pipeline_of("%%prelude\ndef total():\n    return sum(data)", "%%step a\ndata = [1, 2]\nt = total()").plan()
    assert plan.step("a").inputs == {}


def test_a_function_called_where_a_later_cell_of_its_own_step_uses_it_reads_and_changes_through_it():
    plan = pipeline_of(
        "%%step load\nvalues = [1]\nfactor = 2\ncleaned = []\nextra = 3\ndeep = 4",
        "%%step prep\ndef outer():\n    return inner() + again()\ndef inner():\n    return deeper() + outer()\n"
        "def deeper():\n    return deep\ndef again():\n    return extra\n"
        "def scale():\n    return [v * factor for v in values]\n"
        "def clean():\n    cleaned.append(1)\n    global mode\n    mode = 'done'",
        "%%step prep\nresult = scale() + outer()\nclean()",
        "%%step after\nprint(cleaned, mode)",
    ).plan()
    assert plan.step("prep").inputs == {"values": "load", "factor": "load", "extra": "load", "deep": "load",
                                        "cleaned": "load"}
    assert plan.step("after").inputs == {"cleaned": "prep", "mode": "prep"}
    assert set(plan.step("prep").assigns) >= {"cleaned", "mode", "result"}


def test_a_function_defined_in_a_step_is_named_with_its_step_when_what_it_reads_is_missing():
    assert problems("%%step define\ndef f():\n    return ghost", "%%step use\nx = f()") == [
        "Step 'use' calls f() of step 'define', which reads 'ghost', but no step, prelude or parameter provides it. "
        "Assign it in an earlier step, import or define it in the %%prelude, or declare it in %%params."
    ]


def test_a_name_only_a_later_step_assigns_names_that_step_even_past_others():
    assert problems("%%step a\nprint(model)", "%%step b\nx = 1", "%%step c\nmodel = 2") == [
        "Step 'a' reads 'model', which only the later step 'c' assigns. Move the cell of 'c' above 'a', "
        "or add `--after c` to 'a'."
    ]
    [own] = problems("%%step a\nprint(model)\nmodel = 1")  # its own later line is no provider
    assert own.startswith("Step 'a' reads 'model', but no step, prelude or parameter provides it.")


def test_a_step_of_several_cells_all_above_the_writer_is_told_to_move_not_that_it_is_split():
    [problem] = problems("%%step s\nx = 1", "%%step s\nprint(model)", "%%step t\nmodel = 1")
    assert problem.startswith("Step 's' reads 'model', which only the later step 't' assigns.")


def test_a_cycle_of_three_names_each_step_after_the_one_it_needs():
    assert problems("%%step a --after c\nx = 1", "%%step b --after a\ny = 2", "%%step c --after b\nz = 3") == [
        "The steps form a cycle: b -> c -> a -> b. Each needs the one before it (through --after or the data it "
        "reads); remove an --after or move a cell."
    ]


def test_the_parallel_writers_warning_says_how_to_fix_it():
    plan = pipeline_of(
        "%%step left\nconfig = 1", "%%step right\nconfig = 2", "%%step merge --after left\nprint(config)"
    ).plan()
    assert plan.warnings == (
        "Steps 'left' and 'right' both change 'config' and may run in parallel; 'merge' gets it from 'right' "
        "(the later cell). Add `--after` between them to make the order explicit.",
    )


def test_what_kubeflow_could_not_take_is_a_plan_problem_with_its_fix():
    assert problems("%%step a_b\nx = 1", "%%step a-b\ny = 2") == [
        "Steps 'a_b' and 'a-b' both become the Kubeflow task 'a-b' ('_' and '-' are the same there): rename one."
    ]
    assert problems("%%step a\nkfmagic_metrics = 1\n_kfm_x = 2", "%%step b\nprint(kfmagic_metrics, _kfm_x)") == [
        "Step 'a': the variable name '_kfm_x' is reserved by kfmagic; rename it.",  # a's outputs: sorted
        "Step 'a': the variable name 'kfmagic_metrics' is reserved by kfmagic; rename it.",
        "Step 'b': the variable name 'kfmagic_metrics' is reserved by kfmagic; rename it.",  # b's inputs: as read
        "Step 'b': the variable name '_kfm_x' is reserved by kfmagic; rename it.",
    ]
    assert problems("%%step a\n_hidden = 1", "%%step b\nprint(_hidden)")[0] == (
        "Step 'a' passes '_hidden' on or receives it, but Kubeflow names of inputs and outputs must begin with a "
        "letter; rename the variable."
    )
    assert problems("%%step a\ndata, data_in = [], 1", "%%step b\ndata.append(data_in)\ndata_in = 2",
                    "%%step c\nprint(data, data_in)") == [
        "Step 'b': data_in would name both an input and an output of its Kubeflow component; rename the variable."
    ]


def test_a_last_step_keeps_for_kubeflow_only_names_it_can_take_and_inputs_it_passes_on_get_in():
    from kfmagic.plan import arguments, kept

    plan = pipeline_of(
        "%%params\nrate = 1", "%%step a\nx = 1\nitems = []",
        "%%step b\nitems.append(x * rate)\n_tmp = 2\nkfmagic_output = 3\nlast = 4",
    ).plan()
    b = plan.step("b")
    assert b.keep == ("_tmp", "kfmagic_output", "last", "items") and kept(b) == ["last", "items"]
    assert arguments(b) == {"x": "x", "items": "items_in", "rate": "rate"}


def test_every_missing_name_of_one_step_is_reported():
    assert [p.split(",")[0] for p in problems("%%step a\nprint(first, second)")] == [
        "Step 'a' reads 'first'", "Step 'a' reads 'second'"
    ]


def test_a_cell_that_cannot_be_read_is_the_only_problem_it_causes_and_others_are_still_found():
    assert problems("%%step a\nx = (", "%%step a\nfrom math import *", "%%step b\nprint(x, y)") == [
        "Step 'a' (cell 1): line 2: '(' was never closed",
        "Step 'a' (cell 2): `from math import *` hides which names the step defines. Import the names you use, "
        "or move the import to the %%prelude.",
    ]  # what b reads may come from a's unreadable cell: not called missing
    assert problems("%%prelude\ndef f(:", "%%prelude\nx = (", "%%step a\nprint(anything)") == [
        "%%prelude (cell 1): line 2: invalid syntax", "%%prelude (cell 2): line 2: '(' was never closed"
    ]


def test_code_that_may_bind_any_name_leaves_the_names_steps_read_unchecked():
    run_in_prelude = pipeline_of("%%prelude\n%run helpers.py", "%%step a\ny = helper()").plan()
    assert run_in_prelude.step("a").inputs == {}
    run_in_step = pipeline_of("%%step a\n%run helpers.py\ny = helper()", "%%step b\nz = y").plan()
    assert run_in_step.step("a").inputs == {} and run_in_step.step("b").inputs == {"y": "a"}
    from kfmagic.plan import build_plan  # no star_names given: a star import's names are unknown

    cells = pipeline_of("%%prelude\nfrom helpers import *", "%%step a\ny = helper()").cells
    assert build_plan("p", None, cells).step("a").inputs == {}


def test_with_an_unreadable_star_import_a_method_call_on_a_name_no_step_binds_passes_nothing_on():
    plan = pipeline_of("%%prelude\nfrom no_such_module_anywhere import *", "%%step a\nnp.random.seed(0)",
                       "%%step b\nx = np.ones(3)").plan()
    assert plan.step("b").inputs == {} and plan.step("a").assigns == ()


def test_the_prelude_reads_are_checked_across_all_its_cells_and_say_when_no_step_assigns():
    assert problems("%%prelude\nn = len(data)", "%%prelude\nimport os", "%%step a\ndata = 1") == [
        "%%prelude (cell 1) reads 'data': step 'a' assigns it, but the prelude runs at the start of every step, "
        "before the step's inputs are loaded. Compute it in a step, or define it in the prelude."
    ]
    assert problems("%%prelude\nn = ghost", "%%step a\nx = 1") == [
        "%%prelude (cell 1) reads 'ghost': the prelude runs at the start of every step, before the step's inputs "
        "are loaded. Compute it in a step, or define it in the prelude."
    ]


def test_functions_that_change_their_arguments_are_known_by_name_across_cells():
    plan = pipeline_of(
        "%%prelude\ndef clean(df):\n    df['x'] = 1\ndef scale(df):\n    df['y'] = 2",  # same parameters
        "%%prelude\ndef wrapper(df):\n    clean(df)",  # a later prelude cell knows clean
        "%%step make\nframe, other, items = {}, {}, []\ndef fill(rows):\n    rows.append(1)\ndef grow(rows):\n    rows.append(2)",
        "%%step first\nclean(frame)",
        "%%step second\nwrapper(other)",
        "%%step third\nfill(items)",
        "%%step use\nprint(frame, other, items)",
    ).plan()
    assert plan.step("use").inputs == {"frame": "first", "other": "second", "items": "third"}


def test_a_function_of_an_earlier_cell_of_the_step_binds_what_it_assigns_for_the_cells_below():
    plan = pipeline_of(
        "%%prelude\nclass Model:\n    def fit(self):\n        return data",
        "%%step load\ndata = [1]\nitems = []",
        "%%step s\ndef setup():\n    global mode\n    mode = 'x'\nm = Model()",
        "%%step s\nitems.append(1)\nsetup()\nm.fit()",
        "%%step s\nprint(mode)",
        "%%step after\nprint(items, mode)",
    ).plan()
    assert plan.step("s").inputs == {"data": "load", "items": "load"}
    assert plan.step("after").inputs == {"items": "s", "mode": "s"}


@pytest.mark.parametrize("where, inputs", [("%%prelude", {}), ("%%step define", {"setup": "define"}), ("%%step a", {})])
def test_a_name_a_called_function_assigns_is_the_steps_own_in_the_cell_that_calls_it(where, inputs):
    plan = pipeline_of(f"{where}\ndef setup():\n    global mode\n    mode = 'x'", "%%step a\nsetup()\nprint(mode)").plan()
    assert plan.step("a").inputs == inputs


def test_a_prelude_rebinding_through_a_function_adds_to_what_the_step_assigns():
    plan = pipeline_of(
        "%%prelude\ncounts = {}\ndef reset():\n    global counts\n    counts = {}",
        "%%step b\nz = 1\nreset()", "%%step c\ncounts = 0\nreset()",
    ).plan()
    assert plan.step("b").assigns == ("z", "counts") and plan.step("c").assigns == ("counts",)


def test_a_variable_holding_a_variable_that_holds_a_function_reads_through_both():
    plan = pipeline_of(
        "%%prelude\ndef report():\n    return total",
        "%%step load\ntotal = 1", "%%step pick\nhandler = report", "%%step wrap\ntable = {'f': handler}",
        "%%step box\nouter = [table]", "%%step use\nout = outer[0]['f']()",
    ).plan()
    assert plan.step("use").inputs == {"outer": "box", "table": "wrap", "handler": "pick", "total": "load"}


def test_after_edges_reach_through_steps_registered_later_and_transitively():
    plan = pipeline_of("%%step c --after b\nprint(x)", "%%step b --after a\ny = 1", "%%step a\nx = 1").plan()
    assert plan.step("c").inputs == {"x": "a"} and [s.name for s in plan.steps] == ["a", "b", "c"]


def test_the_options_of_a_step_over_several_cells_add_up():
    plan = pipeline_of(
        "%%step a --after z --outputs x --metrics m --env A=1 --packages numpy\nx = 1\nm = 2.0",
        "%%step a --env B=2 --env A=1 --secret s:k:V\ny = 2",
        "%%step z\nw = 0",
    ).plan()
    a = plan.step("a")
    assert (a.after, a.metrics, a.upstream) == (("z",), ("m",), ("z",)) and "x" in a.outputs
    assert (a.options["env"], a.options["packages"], a.options["secret"]) == (["A=1", "B=2"], ["numpy"], ["s:k:V"])
    assert problems("%%step a --gpu 1 --gpu-type t1\nx = 1", "%%step a --gpu 1 --gpu-type t2\ny = 2") == [
        "Step 'a' (cell 2): --gpu-type 't2' contradicts 't1' given on another cell of the step; give it once."
    ]


def test_what_the_plan_records_of_each_step_for_the_runners():
    plan = pipeline_of("%%step report --after z a\nprint(x, y)", "%%step z\nx = 1", "%%step a\ny = 2",
                       "%%step c\nprint(x)").plan()
    assert [(s.name, s.index) for s in plan.steps] == [("z", 1), ("a", 2), ("report", 0), ("c", 3)]
    assert plan.step("report").upstream == ("z", "a")  # in plan order
    assert plan.step("z").needed_by == {"x": ["report", "c"]} and plan.step("c").needed_by == {}


def test_a_parameter_reported_as_a_metric_is_not_an_output():
    plan = pipeline_of("%%params\nlr = 0.1", "%%step a --metrics lr\nx = lr").plan()
    a = plan.step("a")
    assert (a.outputs, a.params, a.metrics) == ((), ("lr",), ("lr",))


def test_the_plan_problems_name_what_exists_and_what_kfmagic_keeps_for_itself():
    assert problems("%%prelude\nimport os") == [
        "The pipeline has no steps: mark a cell with `%%step NAME` (see %%step?)."
    ]
    assert problems("%%step a\nx = 1", "%%step b --after zzz\ny = 2") == [
        "Step 'b': --after zzz: no such step. Steps: a, b."
    ]
    assert problems("%%step kfmagic-runtime\nx = 1") == [
        "Step 'kfmagic-runtime': the name is kfmagic's own task in Kubeflow; rename the step."
    ]
    assert problems("%%step a\ndata, data_in, rows, rows_in = [], 1, [], 2",
                    "%%step b\ndata.append(data_in)\nrows.append(rows_in)\ndata_in, rows_in = 3, 4",
                    "%%step c\nprint(data, data_in, rows, rows_in)") == [
        "Step 'b': data_in, rows_in would name both an input and an output of its Kubeflow component; "
        "rename the variable."
    ]


def test_downstream_is_every_step_that_depends_on_one_transitively():
    plan = pipeline_of("%%step a\nx = 1", "%%step b\ny = x", "%%step c --after b\nz = 1", "%%step d\nw = 2",
                       "%%step e\nprint(z, w)").plan()
    assert (plan.downstream("a"), plan.downstream("d"), plan.downstream("e")) == ({"b", "c", "e"}, {"e"}, set())


def test_the_plan_keeps_each_cells_code_as_run_and_as_written_with_its_label():
    from kfmagic.plan import CodePart

    plan = pipeline_of("%%prelude\nimport os", "%%step a\nfiles = !ls\nx = 1").plan()
    assert plan.prelude == (CodePart("\nimport os\n", "%%prelude\nimport os", "cell 1"),)
    assert plan.step("a").parts == (
        CodePart("\nfiles = get_ipython().getoutput('ls')\nx = 1\n", "%%step a\nfiles = !ls\nx = 1", "cell 2"),
    )


def test_kfmagics_own_pipeline_parameters_cannot_be_declared():
    from kfmagic.plan import RUN_ID_PARAM, STORE_PARAM

    assert problems(f"%%params\n{STORE_PARAM} = 'x'\n{RUN_ID_PARAM} = 'y'", "%%step a\nz = 1") == [
        f"Parameter {name!r}: the name is kfmagic's own pipeline parameter; rename it." for name in (STORE_PARAM, RUN_ID_PARAM)
    ]


def test_after_a_name_its_called_function_assigns_the_step_still_reads_the_rest():
    plan = pipeline_of("%%prelude\ndef setup():\n    global mode\n    mode = 'x'", "%%step load\nrows = [1]",
                       "%%step a\nsetup()\nprint(mode, rows)").plan()
    assert plan.step("a").inputs == {"rows": "load"}


def test_the_global_random_generators_the_prelude_and_each_step_seed():
    plan = pipeline_of(
        "%%prelude\nimport numpy as np\nimport random\nnp.random.seed(0)\ndef reset():\n    np.random.seed(4)",
        "%%step a\nrandom.seed(1)\nx = 1",
        "%%step b\nfrom numpy.random import seed\nseed(2)",
        "%%step c\nrng = np.random.RandomState(0)\nrng.seed(3)",  # a generator of its own
        "%%step d\nreset()",
    ).plan()
    assert plan.seeded == {"numpy": "np.random.seed(0)"}
    assert {step.name: step.seeds for step in plan.steps} == {
        "a": {"random": "random.seed(1)"}, "b": {"numpy": "seed(2)"}, "c": {}, "d": {"numpy": "np.random.seed(4)"},
    }


def test_a_step_drawing_after_another_from_the_preludes_seed_is_named_with_it():
    plan = pipeline_of(
        "%%prelude\nimport numpy as np\nnp.random.seed(0)",
        "%%step a\nx = np.random.rand()", "%%step b\ny = 1", "%%step c\nz = np.random.rand()",
        "%%step d\nnp.random.seed(1)\nw = np.random.rand()", "%%step e\nv = np.random.rand()",
    ).plan()
    drew = {"a": ["numpy"], "c": ["numpy"], "d": ["numpy"], "e": ["numpy"]}
    tail = (
        "after a step above drew from it: top to bottom a step continues from where the steps above left the "
        "generator, but each step of the pipeline runs in a process of its own, which starts from the %%prelude's "
        "seed. So the step drew other numbers than the notebook does, and what it computed from them may differ. "
        "Seed the generator at the top of each step that draws, or give what it calls a random_state, and both draw "
        "the same numbers."
    )
    assert random_draw_warnings(plan, drew) == [
        "Step 'c' (after 'a') drew random numbers from numpy's global random generator (np.random), seeded by the "
        "%%prelude: np.random.seed(0), " + tail,
        "Step 'e' (after 'd') drew random numbers from numpy's global random generator (np.random), seeded by step "
        "'d': np.random.seed(1), " + tail,
    ]
    assert random_draw_warnings(plan, {"c": ["numpy"], "d": ["numpy"]}) == []  # c is the first to draw
    [both] = random_draw_warnings(plan, {"a": ["numpy"], "b": ["numpy"], "c": ["numpy"]})  # one per seed
    assert both.startswith("Steps 'b' (after 'a'), 'c' (after 'b') drew random numbers from numpy's") and "So these steps drew" in both


def test_random_draws_differ_only_where_the_notebook_gives_fixed_numbers():
    unseeded = pipeline_of("%%prelude\nimport random", "%%step a\nx = random.random()", "%%step b\ny = random.random()")
    assert random_draw_warnings(unseeded.plan(), {"a": ["random"], "b": ["random"]}) == []  # random both ways
    seeded_by_a_step = pipeline_of(
        "%%prelude\nimport random", "%%step a\nrandom.seed(0)\nx = random.random()", "%%step b\ny = random.random()"
    ).plan()
    [warning] = random_draw_warnings(seeded_by_a_step, {"a": ["random"], "b": ["random"]})
    assert warning.startswith("Step 'b' (after 'a') drew random numbers from the random module's generator, seeded "
                              "by step 'a': random.seed(0)")
    assert "each step of the pipeline runs in a process of its own, where it is not seeded." in warning
    reseeded_alike = pipeline_of(  # b leaves the generator as every step finds it: c draws what it would
        "%%prelude\nimport random\nrandom.seed(0)", "%%step a\nx = random.random()", "%%step b\nrandom.seed(0)",
        "%%step c\ny = random.random()",
    ).plan()
    assert random_draw_warnings(reseeded_alike, {"a": ["random"], "c": ["random"]}) == []


def test_a_step_importing_again_what_the_prelude_imports_provides_nothing():
    plan = pipeline_of(
        "%%prelude\nimport numpy as np\nfrom sklearn.svm import SVC",
        "%%step a\nimport numpy as np\nnp.random.seed(42)\nx = np.zeros(2)",  # handson-ml2 re-imports in cells
        "%%step b\nimport numpy\nfrom sklearn.svm import SVC\ny = np.ones(2)",
        "%%step c\nz = np.zeros(1), numpy.zeros(1), SVC()",
        "%%step d\nimport pandas as np\nw = np.DataFrame()",  # another module under the name: d's own
        "%%step e\nv = np.DataFrame()",
    ).plan()
    assert plan.step("c").inputs == {"numpy": "b"}  # `numpy` the prelude does not bind
    assert plan.step("e").inputs == {"np": "d"}
    assert [step.name for step in plan.steps if step.upstream] == ["c", "e"]


def test_using_a_module_a_step_imported_chains_no_steps():
    plan = pipeline_of(  # PythonDataScienceHandbook 03.12: a section per step, each ending in np.allclose(...)
        "%%step arrays\nimport numpy as np\nimport matplotlib.pyplot as plt\nx = np.arange(3.0)",
        "%%step check\nnp.allclose(x, x * 1)\nplt.plot(x)",
        "%%step again\nnp.allclose(x, x + 0)",
        "%%step last\ny = np.zeros(2)\nplt.plot(y)",
    ).plan()
    assert plan.step("last").inputs == {"np": "arrays", "plt": "arrays"}
    assert plan.step("again").upstream == ("arrays",) and plan.step("check").outputs == ()


def test_a_step_drawing_from_a_generator_of_its_own_passes_it_on_with_its_state():
    plan = pipeline_of(
        "%%prelude\nimport numpy as np",
        "%%step make\nrng = np.random.default_rng(42)\nx = rng.random(3)",
        "%%step draw\ny = rng.random(2)",
        "%%step other\nz = x.mean()",
        "%%step again\nw = rng.normal()\nv = x.sum()",
    ).plan()
    assert plan.step("draw").inputs == {"rng": "make"} and "rng" in plan.step("draw").outputs
    assert plan.step("again").inputs == {"rng": "draw", "x": "make"}
    assert plan.step("other").inputs == {"x": "make"}  # a value used by a call is read, not changed
    made_first = pipeline_of("%%prelude\nimport random\nrng = random.Random(1)", "%%step a\nx = rng.random()",
                             "%%step b\ny = rng.choice([1, 2])").plan()
    assert made_first.step("b").inputs == {"rng": "a"}  # not the prelude's fresh one: the one a drew from


def test_steps_sharing_a_file_run_in_notebook_order():
    plan = pipeline_of(  # handson-ml2 tools_pandas: my_df.to_csv("my_df.csv"), then pd.read_csv("my_df.csv") in another cell
        "%%prelude\nimport joblib\nimport pandas as pd",
        "%%step write\nframe = pd.DataFrame()\nframe.to_csv('out/my_df.csv')\njoblib.dump(frame, 'frame.pkl')",
        "%%step read\nback = pd.read_csv('./out/my_df.csv', index_col=0)",
        "%%step load\nwith open('frame.pkl', 'rb') as f:\n    again = f.read()",
        "%%step overwrite\nwith open('out/my_df.csv', 'w') as f:\n    f.write('x')",
        "%%step unrelated\nother = pd.read_csv('other.csv')",
        "%%step show\nfor filename in ('out/my_df.csv', 'frame.pkl'):\n    with open(filename, 'rb') as f:\n        print(len(f.read()))",
    ).plan()
    assert plan.step("read").upstream == ("write",) and plan.step("load").upstream == ("write",)
    assert plan.step("overwrite").upstream == ("write", "read")  # not before what it overwrites is read
    assert plan.step("unrelated").upstream == () and plan.step("read").inputs == {}
    assert plan.step("show").upstream == ("write", "overwrite")  # names bound to literal paths count


def test_without_an_after_the_notebook_order_alone_decides_and_nothing_is_warned():
    plan = pipeline_of("%%step left\nconfig = 1\nother = 1", "%%step right\nconfig = 2",
                       "%%step merge\nprint(config, other)").plan()
    assert plan.step("merge").inputs == {"config": "right", "other": "left"}
    assert plan.warnings == ()


def test_the_plan_names_the_parameters_the_prelude_reads_its_functions_included():
    plan = pipeline_of("%%params\nseed = 1\nC = 2\nunused = 3", "%%prelude\nbase = seed\ndef scaled(v):\n    return v * C",
                       "%%step a\nx = scaled(base) + unused").plan()
    assert plan.prelude_params == ("seed", "C")
