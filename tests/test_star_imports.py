"""What `from MODULE import *` in the %%prelude binds, read from the module's source without running
it (kfmagic.modules), and what the plan makes of it: local modules of the notebook's folder,
packages, relative star imports, and modules whose source cannot tell (None: may bind anything).
"""

import textwrap

import pytest

from kfmagic.errors import PlanError
from kfmagic.modules import star_names
from kfmagic.registry import Pipeline
from kfmagic.syntax import parse_cell


def write(folder, path, source):
    """A module file under `folder` (parents made), e.g. write(tmp_path, "pkg/__init__.py", ...)."""
    target = folder / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(textwrap.dedent(source))
    return target


def test_a_modules_literal_all_is_what_it_exports(tmp_path):
    write(tmp_path, "helpers.py", "__all__ = ['load', 'LIMIT']\ndef load(): pass\ndef hidden(): pass\nLIMIT = 1\n")
    assert star_names("helpers", str(tmp_path)) == ("load", "LIMIT")
    write(tmp_path, "tupled.py", "__all__ = ('a',)\na = 1\n")
    assert star_names("tupled", str(tmp_path)) == ("a",)


def test_without_all_the_public_names_it_binds_in_order_and_once(tmp_path):
    write(tmp_path, "helpers.py", """\
        import os
        from math import floor as _floor
        _cache = {}
        def load(path):
            return path
        class Reader:
            pass
        load = load
        x, y = 1, 2
    """)
    assert star_names("helpers", str(tmp_path)) == ("os", "load", "Reader", "x", "y")


@pytest.mark.parametrize("all_line", ["__all__ = [name for name in dir()]", "__all__ = ['a', 2]", "__all__ = 'a'"])
def test_an_all_that_is_not_a_literal_list_of_names_gives_the_public_names(tmp_path, all_line):
    write(tmp_path, "helpers.py", f"{all_line}\na = 1\n_b = 2\n")
    assert star_names("helpers", str(tmp_path)) == ("a",)


def test_star_imports_of_star_imports_are_followed_through_packages_and_relative_names(tmp_path):
    write(tmp_path, "pkg/__init__.py", "from .sub import *\nfrom pkg.other import *\ntop = 1\n")
    write(tmp_path, "pkg/sub.py", "from .. import deep\nfrom .inner.leaf import *\nsub_name = 1\n")
    write(tmp_path, "pkg/other.py", "other_name = 1\n")
    write(tmp_path, "pkg/inner/__init__.py", "")
    write(tmp_path, "pkg/inner/leaf.py", "from ..other import *\nfrom .sibling import *\nfrom .Xtra import *\nleaf_name = 1\n")
    write(tmp_path, "pkg/inner/sibling.py", "sibling_name = 1\n")
    write(tmp_path, "pkg/inner/Xtra.py", "x_name = 1\n")
    write(tmp_path, "pkg/up.py", "from ..outside import *\n")  # one level up from pkg: the top
    write(tmp_path, "outside.py", "outside_name = 1\n")
    assert star_names("pkg", str(tmp_path)) == ("top", "deep", "sub_name", "leaf_name", "other_name", "sibling_name", "x_name")
    assert star_names("pkg.inner.leaf", str(tmp_path)) == ("leaf_name", "other_name", "sibling_name", "x_name")
    assert star_names("pkg.up", str(tmp_path)) == ("outside_name",)


def test_the_notebooks_folder_is_searched_before_installed_modules(tmp_path):
    write(tmp_path, "json.py", "__all__ = ['mine']\nmine = 1\n")  # shadows the standard library, as in the kernel
    assert star_names("json", str(tmp_path)) == ("mine",)
    assert "JSONDecodeError" in star_names("json", str(tmp_path / "elsewhere"))  # the installed one's __all__


@pytest.mark.parametrize("module", [
    "sys",  # built into the interpreter: no source
    "no_such_module_anywhere",
    "helpers.missing",  # a submodule that is not there
    "broken",  # source that does not parse
    "",  # a relative import past the top of its package
    ".helpers",  # relative: only a module's own star imports say which package they start from
])
def test_a_module_whose_source_cannot_tell_gives_none(tmp_path, module):
    write(tmp_path, "helpers.py", "x = 1\n")
    write(tmp_path, "broken.py", "def (:\n")
    assert star_names(module, str(tmp_path)) is None


def test_a_nested_star_import_that_cannot_be_read_makes_the_whole_import_unknown(tmp_path):
    write(tmp_path, "outer.py", "from no_such_module_anywhere import *\nmine = 1\n")
    assert star_names("outer", str(tmp_path)) is None
    write(tmp_path, "past.py", "from ... import *\n")  # beyond the top: an import error at run time
    assert star_names("past", str(tmp_path)) is None
    write(tmp_path, "pkg/__init__.py", "top = 1\n")
    write(tmp_path, "pkg/inner/__init__.py", "")
    write(tmp_path, "pkg/inner/far.py", "from .... import *\nfar = 1\n")  # three levels up from pkg.inner
    assert star_names("pkg.inner.far", str(tmp_path)) is None


def test_star_imports_nested_deeper_than_any_real_module_are_not_followed(tmp_path):
    for level in range(7):
        write(tmp_path, f"m{level}.py", f"from m{level + 1} import *\nname{level} = 1\n")
    write(tmp_path, "m7.py", "name7 = 1\n")
    assert star_names("m2", str(tmp_path)) == tuple(f"name{level}" for level in range(2, 8))
    assert star_names("m1", str(tmp_path)) is None  # six star imports below it: deeper than kfmagic reads


def plan_of(*sources):
    pipeline = Pipeline()  # its notebook's folder: the working directory
    for number, source in enumerate(sources, 1):
        pipeline.add(parse_cell(source), label=f"cell {number}")
    return pipeline


def test_the_plan_knows_what_a_local_star_import_binds_and_what_it_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the notebook's folder
    write(tmp_path, "helpers.py", "__all__ = ['scale']\ndef scale(v):\n    return v * 2\n")
    pipeline = plan_of("%%prelude\nfrom helpers import *", "%%step a\nx = scale(2)", "%%step b\ny = x + scale(1)")
    plan = pipeline.plan()
    assert plan.step("b").inputs == {"x": "a"} and plan.step("a").inputs == {}
    missing = plan_of("%%prelude\nfrom helpers import *", "%%step a\nx = unscaled(2)")
    with pytest.raises(PlanError) as caught:
        missing.plan()
    assert caught.value.problems == [
        "Step 'a' reads 'unscaled', but no step, prelude or parameter provides it. Assign it in an earlier step, "
        "import or define it in the %%prelude, or declare it in %%params."
    ]


def test_a_local_modules_digest_follows_its_text(tmp_path):
    from kfmagic.modules import module_source

    path = write(tmp_path, "helpers.py", "def scale(v):\n    return v * 2\n")
    first = module_source("helpers", str(tmp_path))
    assert len(first) == 64 and module_source("helpers", str(tmp_path)) == first
    path.write_text("def scale(v):\n    return v * 3\n")
    assert module_source("helpers", str(tmp_path)) not in (None, first)
    assert module_source("sys", str(tmp_path)) is None and module_source("no_such_module_anywhere", str(tmp_path)) is None


def test_a_local_packages_digest_covers_its_modules_and_the_local_modules_they_import(tmp_path):
    from kfmagic.modules import module_source

    write(tmp_path, "pkg/__init__.py", "")
    inner = write(tmp_path, "pkg/sub/mod.py", "import units\nVALUE = units.SCALE\n")
    units = write(tmp_path, "units.py", "import json\nSCALE = 1\n")
    digests = [module_source("pkg", str(tmp_path))]
    inner.write_text("import units\nVALUE = units.SCALE + 1\n")  # `from pkg.sub.mod import VALUE` is known as pkg
    digests.append(module_source("pkg", str(tmp_path)))
    units.write_text("import json\nSCALE = 2\n")  # a module of the notebook's folder that the package imports
    digests.append(module_source("pkg", str(tmp_path)))
    assert None not in digests and len(set(digests)) == 3
    assert module_source("pkg", str(tmp_path)) == digests[-1]
