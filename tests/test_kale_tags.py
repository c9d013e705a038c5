"""Kale's tags and settings, each read as kfmagic reads it (kfmagic.kale): the magic line every tag
becomes, the settings in the notebook's metadata, every warning and error in full, and `convert`
run in-process on a notebook written here (test_kale.py converts the example with the CLI)."""

import copy

import pytest
from conftest import tagged_notebook

from kfmagic import kale, notebook
from kfmagic.errors import CellSyntaxError, KfmagicError


def tagged(*cells, **settings):
    return tagged_notebook(*cells, metadata={"kubeflow_notebook": settings})


def lines(nb, **kwargs):
    """The magic line of each cell kfmagic reads from `nb` (None: not in the pipeline), and the warnings."""
    translation = kale.translate(nb, **kwargs)
    return [text.split("\n", 1)[0] if text else None for text in translation.texts], translation.warnings


def test_special_tags_in_any_spelling_and_block_names_kale_reads_as_them():
    found, warnings = lines(tagged(
        ("import os", "Imports"), ("def f(): pass", "block:functions"), ("import sys", "step:imports"),
        ("rate = 1", "pipeline_parameters"), ("x = rate", "step:a"), ("skipped = 1", "block:skip"),
        ("print(x)", "Pipeline Metrics"), ("y = x", "step:b", "skip"),
    ))
    assert found == ["%%prelude", "%%prelude", "%%prelude", "%%params", "%%step a --metrics x", None, None, None]
    assert warnings == []


def test_a_special_tag_decides_the_cell_whatever_step_tag_comes_with_it():
    found, _ = lines(tagged(("x = 1", "step:a"), ("import os", "step:b", "imports"), ("import sys", "imports", "step:c")))
    assert found == ["%%step a", "%%prelude", "%%prelude"]


def test_options_become_flags_in_order_and_the_rest_is_said_once_per_tag():
    found, warnings = lines(tagged(
        ("a = 1", "step:a", "limit:cpu:2", "limit:memory:4Gi", "limit:gpu:1", "cache:enabled", "image:py:3"),
        ("b = a", "step:b", "limit:amd.com/gpu:2", "cache:maybe", "label:team:ml", "annotation:owner:me"),
        ("c = b", "step:c", "cache:disabled", "limit:ephemeral-storage:1Gi", "papermill:other-tool"),
    ))
    assert lines(tagged(("a = 1", "step:a", "limit:memory:1Gi", "limit:cpu:1")))[0] == ["%%step a --memory 1Gi --cpu 1"]
    assert found == [
        "%%step a --cpu 2 --memory 4Gi --gpu 1 --image py:3 --cache",
        "%%step b --gpu 2 --gpu-type amd.com/gpu",
        "%%step c --no-cache",
    ]
    assert warnings == [
        "step 'b': Kale tag cache:maybe is not applied: use cache:enabled or cache:disabled.",
        "step 'b': Kale tag annotation:owner:me is not applied: kfmagic sets no pod annotations.",
        "step 'b': Kale tag label:team:ml is not applied: kfmagic sets no pod labels.",
        "step 'c': Kale tag limit:ephemeral-storage:1Gi is not applied: kfmagic sets cpu, memory and GPUs only.",
    ]


def test_a_limit_with_a_colon_in_its_amount_reaches_the_step_check_as_written():
    with pytest.raises(KfmagicError, match=r"--cpu 1:5: write CPUs as a number"):
        notebook.from_notebook(tagged(("x = 1", "step:a", "limit:cpu:1:5")))


def test_tags_that_need_a_step_say_so_outside_one_and_are_fine_inside():
    found, warnings = lines(tagged(
        ("import os", "imports", "prev:a"), ("rate = 1", "pipeline-parameters", "limit:cpu:1"),
        ("z = 0", "prev:a"), ("x = 1", "step:a"), ("y = x", "block:", "prev:a", "limit:memory:1Gi"),
        ("import sys", "imports", "papermill:other-tool"),
    ))
    assert found == ["%%prelude", "%%params", "%%params", "%%step a", "%%step a --memory 1Gi", "%%prelude"]
    assert warnings == [
        f"cell {number}: its prev:/limit:/image:/cache: tags are not applied: the cell is not part of a step."
        for number in (1, 2, 3)
    ]


def test_two_step_tags_on_one_cell_are_one_error_unless_they_name_one_step():
    with pytest.raises(CellSyntaxError) as caught:
        kale.translate(tagged(("x = 1",), ("y = 1", "step:one", "block:two")))
    assert str(caught.value) == (
        "cell 2: tagged with several steps (one, two); a cell belongs to one step. Keep one step: tag, or split the cell."
    )
    assert lines(tagged(("y = 1", "step:Load Data", "block:load_data")))[0] == ["%%step load_data"]


def test_tags_that_are_not_a_list_of_text_are_not_tags():
    nb = tagged(("x = 1", "step:a"), ("y = 1",), ("z = 1",))
    nb.cells[1].metadata["tags"] = "step:b"  # a string, not a list: no tag at all
    nb.cells[2].metadata["tags"] = {"step:c": True}
    nb.cells[0].metadata["tags"] = ["step:a", 7, None]
    assert lines(nb)[0] == ["%%step a", "%%step a", "%%step a"]


def test_renamed_steps_are_said_once_and_names_kept_as_written_are_not():
    found, warnings = lines(tagged(("a = 1", "step:Load Data"), ("b = a", "step:Load Data"), ("c = b", "step:c", "prev:Load Data")))
    assert found == ["%%step load_data", "%%step load_data", "%%step c --after load_data"]
    assert warnings == ["Kale step 'Load Data' is named 'load_data' (lowercase letters, digits, '-' and '_')."]


def test_steps_defaults_apply_under_each_steps_own_tags_once_per_step():
    nb = tagged(
        ("a = 1", "step:a", "limit:memory:2Gi"), ("a2 = a", "step:a"), ("b = 1", "step:b", "limit:cpu:4"),
        steps_defaults=["limit:cpu:1", "limit:memory:1Gi", "label:team:ml", "annotation:owner:me"],
    )
    found, warnings = lines(nb)
    assert found == ["%%step a --cpu 1 --memory 2Gi", "%%step a", "%%step b --cpu 4 --memory 1Gi"]
    assert warnings == [
        "Kale's steps_defaults annotation:owner:me is not applied: kfmagic sets no pod annotations.",
        "Kale's steps_defaults label:team:ml is not applied: kfmagic sets no pod labels.",
    ]
    assert notebook.from_notebook(nb)[0].plan().step("a").options["cpu"] == "1"


def test_steps_defaults_naming_two_steps_is_one_error_naming_the_setting():
    with pytest.raises(CellSyntaxError) as caught:
        kale.translate(tagged(("a = 1", "step:a"), steps_defaults=["step:x", "step:y"]))
    assert str(caught.value).startswith("kubeflow_notebook.steps_defaults: tagged with several steps (x, y)")


def test_steps_defaults_in_kales_parsed_form_and_as_one_tag():
    found, warnings = lines(tagged(
        ("a = 1", "step:a"),
        steps_defaults={"limits": {"cpu": "2"}, "annotations": {"owner": "me"}, "labels": {"team": "ml"}},
    ))
    assert found == ["%%step a --cpu 2"] and warnings == [
        "Kale's steps_defaults annotation:owner:me is not applied: kfmagic sets no pod annotations.",
        "Kale's steps_defaults label:team:ml is not applied: kfmagic sets no pod labels.",
    ]
    assert lines(tagged(("a = 1", "step:a"), steps_defaults="limit:memory:1Gi"))[0] == ["%%step a --memory 1Gi"]
    assert lines(tagged(("a = 1", "step:a"), steps_defaults={}))[0] == ["%%step a"]


def test_caching_switched_off_for_the_pipeline_holds_where_a_step_does_not_say_otherwise():
    cells = [("a = 1", "step:a"), ("b = a", "step:b", "cache:enabled")]
    assert lines(tagged(*cells, enable_caching=False))[0] == ["%%step a --no-cache", "%%step b --cache"]
    assert lines(tagged(*cells, enable_caching=True))[0] == ["%%step a", "%%step b --cache"]


@pytest.mark.parametrize("settings, init", [
    ({}, "%pipeline init pipeline"),
    ({"pipeline_name": "Iris Demo", "experiment_name": "exp one"}, "%pipeline init iris_demo --experiment 'exp one'"),
    ({"experiment": {"name": "from-dict"}}, "%pipeline init pipeline --experiment from-dict"),
    ({"experiment": "as-text"}, "%pipeline init pipeline --experiment as-text"),
    ({"experiment_name": "wins", "experiment": {"name": "loses"}}, "%pipeline init pipeline --experiment wins"),
    ({"docker_image": " img:1 "}, "%pipeline init pipeline --image img:1"),
    ({"base_image": "base:2"}, "%pipeline init pipeline --image base:2"),
    ({"docker_image": "docker:1", "base_image": "base:2"}, "%pipeline init pipeline --image docker:1"),
    ({"docker_image": "registry/app:X"}, "%pipeline init pipeline --image registry/app:X"),
])
def test_the_header_names_the_pipeline_its_experiment_and_image(settings, init):
    translation = kale.translate(tagged(("a = 1", "step:a"), **settings))
    assert translation.header == f"%load_ext kfmagic\n{init}\n"


def test_the_default_name_is_used_when_kale_gives_none_and_volumes_are_a_warning():
    translation = kale.translate(tagged(("a = 1", "step:a"), volumes=[{"mount_point": "/data"}]), "my file")
    assert translation.header == "%load_ext kfmagic\n%pipeline init my_file\n"
    assert translation.warnings == [
        "Kale's volumes are not applied: kfmagic mounts no volumes from Kale's settings; add --volume to the steps "
        "that need one."
    ]


@pytest.mark.parametrize("settings, said", [
    ({"pipeline_name": 3}, "kubeflow_notebook.pipeline_name is 3; Kale writes it as text."),
    ({"enable_caching": "x" * 38}, f"kubeflow_notebook.enable_caching is {'x' * 38!r}; Kale writes it as true or false."),
    ({"enable_caching": "x" * 39}, f"kubeflow_notebook.enable_caching is {('x' * 39)!r:.37}...; Kale writes it as true or false."),
    ({"steps_defaults": ["limit:cpu:1", 2]}, "kubeflow_notebook.steps_defaults is ['limit:cpu:1', 2]; Kale writes it as "
                                             'a list of tags (text) like ["limit:cpu:2"].'),
    ({"steps_defaults": {"limits": 2}}, "kubeflow_notebook.steps_defaults is {'limits': 2}; Kale writes it as Kale's "
                                        'form {"limits": {"cpu": "2"}, "labels": {...}}.'),
])
def test_a_setting_of_the_wrong_type_is_one_message_with_what_kale_writes(settings, said):
    with pytest.raises(KfmagicError) as caught:
        kale.translate(tagged(("a = 1", "step:a"), **settings))
    assert str(caught.value) == (
        f"The notebook metadata {said} Fix it in the notebook's metadata (or set it again in Kale's panel)."
    )


def test_settings_that_are_not_an_object_are_one_message_and_metadata_that_is_not_one_is_ignored():
    nb = tagged(("a = 1", "step:a"))
    nb.metadata["kubeflow_notebook"] = ["pipeline_name"]
    with pytest.raises(KfmagicError) as caught:
        kale.translate(nb)
    assert str(caught.value) == (
        "The notebook metadata kubeflow_notebook is ['pipeline_name'], not an object of Kale's settings "
        '(e.g. {"pipeline_name": "iris", "steps_defaults": []}). Fix it in the notebook\'s metadata.'
    )
    nb.metadata = ["not", "an", "object"]
    assert kale.translate(nb).header == "%load_ext kfmagic\n%pipeline init pipeline\n"


def test_metrics_go_to_the_last_step_that_assigns_them_or_uses_the_parameter():
    found, warnings = lines(tagged(
        ("rate = 0.5", "pipeline-parameters"), ("broken = (", "pipeline-parameters"), ("seed = 1", "pipeline-parameters"),
        ("acc = 1\nloss = 2", "step:a"), ("acc = rate * seed", "step:b"), ("def (", "step:c"),
        ("loss\nprint(acc)\nprint(rate, seed)", "pipeline-metrics"), ("print(unused)", "pipeline-metrics"),
        ("z = 1", "pipeline-parameters"), ("print(z)", "pipeline-metrics"),
    ))
    assert found[3:6] == ["%%step a --metrics loss", "%%step b --metrics acc rate seed", "%%step c"]
    assert warnings == [
        "cell 8 (pipeline-metrics): 'unused' is not reported as a metric: no step assigns it.",
        "cell 10 (pipeline-metrics): 'z' is not reported as a metric: no step uses that pipeline parameter.",
    ]


@pytest.mark.parametrize("text, said", [
    ("print(acc)\nx = 1", "`x = 1` reports no metric"),
    ("log(acc)", "`log(acc)` reports no metric"),
    ("print(acc, 'label')", "`print(acc, 'label')` reports no metric"),
    ("import os", "`import os` reports no metric"),
    ("print()", "`print()` reports no metric"),
])
def test_a_metrics_line_kale_would_not_read_is_a_warning_naming_it(text, said):
    found, warnings = lines(tagged(("acc = 1", "step:a"), (text, "pipeline-metrics")))
    assert found[0] == ("%%step a --metrics acc" if text.startswith("print(acc") else "%%step a")
    assert warnings == [f"cell 2 (pipeline-metrics): {said}: as in Kale, write one variable per line, e.g. print(accuracy)."]


def test_a_metrics_cell_that_cannot_be_read_is_a_warning():
    assert lines(tagged(("acc = 1", "step:a"), ("print(acc", "pipeline-metrics")))[1] == [
        "cell 2 (pipeline-metrics): cannot be read ('(' was never closed); its metrics are not reported."
    ]
    deep = "print(" + "-" * 5_000 + "1)"
    assert lines(tagged(("acc = 1", "step:a"), (deep, "pipeline-metrics")))[1] == [
        "cell 2 (pipeline-metrics): nested too deeply for Python's parser; its metrics are not reported."
    ]


def test_convert_rewrites_tagged_cells_keeps_the_rest_and_removes_only_kales_tags():
    nb = tagged(
        "# Title",
        ("untagged = 0",),
        ("before = 1", "papermill-tag"),
        ("import os", "imports", "parameters"),
        ("x = 1", "step:a", "limit:cpu:2", "pipeline_metrics_not_kale"),
        "## between",
        ("y = x", "Step: B", "prev:a"),
        ("print(x)", "Pipeline Metrics"),
        pipeline_name="demo",
    )
    del nb.cells[1]["metadata"]  # as some tools write a cell
    nb.nbformat, nb.nbformat_minor = 4, 5
    original = copy.deepcopy(nb)
    out, warnings = kale.convert(nb)
    assert nb == original  # the input is left as it was
    assert [cell.cell_type for cell in out.cells] == ["code", "markdown", "code", "code", "code", "code", "markdown", "code", "code"]
    assert out.cells[0].source == "%load_ext kfmagic\n%pipeline init demo" and "id" in out.cells[0]
    assert [cell.source for cell in out.cells[1:]] == [
        "# Title", "untagged = 0", "before = 1", "%%prelude\nimport os", "%%step a --metrics x --cpu 2\nx = 1", "## between",
        "%%step b --after a\ny = x", "print(x)",
    ]
    assert [cell.get("metadata", {}).get("tags") for cell in out.cells[1:]] == [
        None, None, ["papermill-tag"], ["parameters"], ["pipeline_metrics_not_kale"], None, None, None
    ]
    assert warnings == ["Kale step 'B' is named 'b' (lowercase letters, digits, '-' and '_')."]


@pytest.mark.parametrize("minor, has_id", [(4, False), (5, True), (None, False)])
def test_the_header_cell_has_an_id_only_where_the_format_has_ids(minor, has_id):
    nb = tagged(("x = 1", "step:a"))
    nb.nbformat = 4
    if minor is None:
        del nb["nbformat_minor"]
    else:
        nb.nbformat_minor = minor
    out, _ = kale.convert(nb, "given")
    assert out.cells[0].source == "%load_ext kfmagic\n%pipeline init given"
    assert ("id" in out.cells[0]) is has_id
    assert kale.convert(nb)[0].cells[0].source == "%load_ext kfmagic\n%pipeline init pipeline"
    nb.metadata["kubeflow_notebook"] = {"docker_image": "app:X"}
    assert kale.convert(nb)[0].cells[0].source == "%load_ext kfmagic\n%pipeline init pipeline --image app:X"


def test_an_assignment_in_a_metrics_cell_reports_no_metric():
    found, warnings = lines(tagged(("acc = 1\nloss = 2", "step:a"), ("total = acc\nloss += acc", "pipeline-metrics")))
    assert found == ["%%step a", None]
    assert warnings == [
        f"cell 2 (pipeline-metrics): `{line}` reports no metric: as in Kale, write one variable per line, "
        "e.g. print(accuracy)." for line in ("total = acc", "loss += acc")
    ]


def test_a_metric_printed_in_two_cells_is_named_once():
    found, _ = lines(tagged(("acc = 1", "step:a"), ("print(acc)", "pipeline-metrics"), ("print(acc)", "pipeline-metrics")))
    assert found[0] == "%%step a --metrics acc"


@pytest.mark.parametrize("raw, name", [
    ("Load Data", "load_data"), ("__Load Data__", "load_data"), ("-Train-", "train"), ("a1", "a1"), ("1st", "step_1st"),
    ("!!!", "step"), ("a" * 62 + "_b", "a" * 62), ("x" * 70, "x" * 63),
])
def test_kale_step_names_become_kfmagic_names(raw, name):
    assert kale.step_name(raw) == name


def test_a_name_only_a_cell_outside_the_pipeline_assigns_is_explained_with_its_tags():
    nb = tagged(("before = 1",), ("x = 1", "step:a"), ("skipped = 2", "skip"), ("y = before + skipped", "step:b"))
    with pytest.raises(KfmagicError) as caught:
        notebook.from_notebook(nb)[0].plan()
    assert caught.value.problems == [
        "Step 'b' reads 'before', but no step, prelude or parameter provides it. The notebook's cell 1 assigns it, "
        "but that cell is not part of the pipeline: no Kale tag puts it in a step. Tag it step:NAME, imports or functions.",
        "Step 'b' reads 'skipped', but no step, prelude or parameter provides it. The notebook's cell 3 assigns it, "
        "but that cell is not part of the pipeline: it is tagged skip. Tag it step:NAME, imports or functions instead.",
    ]
    assert [kale.is_skipped(cell) for cell in tagged(("a", "skip"), ("b", " Skip "), ("c", "block:skip"), ("d",),
                                                     ("e", "step:one", "step:two")).cells] == [True, True, True, False, False]


def test_a_prev_tag_naming_no_step_is_dropped_on_a_continuing_cell_and_refused_on_a_step():
    # kubeflow/examples' disaster-tweets notebook: `block:` + `prev:pre` on a cell continuing a step
    nb = tagged(("x = 1", "block:load"), ("y = x", "block:prep", "prev:load"), ("z = y", "block:", "prev:pre", "prev:load"))
    found, warnings = lines(nb)
    assert found == ["%%step load", "%%step prep --after load", "%%step prep --after load"]
    assert warnings == [
        "cell 3: tag prev:pre names no step of the notebook; as Kale does on a cell that continues step 'prep', "
        "it is not applied."
    ]
    refused = tagged(("x = 1", "block:load"), ("y = x", "block:prep", "prev:pre"))
    assert lines(refused)[0] == ["%%step load", "%%step prep --after pre"]  # the plan refuses it, as Kale does
