"""What `from MODULE import *` in the %%prelude provides, read from the module's source, never run.

The planner must know which names a star import of the prelude binds: a step calling
`np.random.seed(0)` on a star-imported `np` is not np's provider, and a step reading a name the
module does not export is an error to report. Running the module would run notebook code at
plan time; reading its source does not. A module whose source cannot be read (a compiled
extension, not found, not Python) gives None, and the planner falls back to a rule that never
chains steps through modules.
"""

import ast
import hashlib
import importlib.machinery
import os
import sys

from .analysis import AnalysisError, analyze

_MAX_DEPTH = 5  # star imports of star imports: deeper than any real module goes


def star_names(module, directory, depth=0):
    """The names `from module import *` binds (a tuple), or None when the source cannot tell.

    `directory` (the notebook's folder) is searched before sys.path, as the kernel finds modules.
    """
    found = _source(module, directory)
    if found is None or depth > _MAX_DEPTH:
        return None
    source, package = found
    try:
        tree = ast.parse(source)
        info = analyze(source)
    except (SyntaxError, ValueError, AnalysisError, RecursionError, MemoryError):
        return None
    exported = _dunder_all(tree)
    if exported is not None:
        return exported
    names = [name for name in info.assigns if not name.startswith("_")]
    for other in info.star_imports:
        nested = star_names(_absolute(other, package), directory, depth + 1)
        if nested is None:
            return None
        names += nested
    return tuple(dict.fromkeys(names))


def module_source(module, directory):
    """A digest of `module`'s source as an import would find it (None if there is none to read): a
    local module's code decides what a step that imports it computes. For a package, every module in
    it counts (`from pkg.mod import X` is known as `pkg`); so do the modules of `directory` (the
    notebook's folder) that these import, however deep."""
    files = _local_files(module, directory, set())
    if not files:
        return None
    digest = hashlib.sha256()
    for path in sorted(files):
        with open(path, "rb") as file:
            digest.update(f"{len(path)}:{path}".encode() + hashlib.sha256(file.read()).digest())
    return digest.hexdigest()


def _local_files(module, directory, seen):
    """The source files of `module` (all of a package's) and of the modules in `directory` they
    import; `seen`: the files already gathered, which this adds to."""
    spec = _find_spec(module, directory)
    if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        return seen
    if spec.submodule_search_locations is None:
        files = [spec.origin]
    else:
        files = [os.path.join(folder, name) for location in spec.submodule_search_locations
                 for folder, _, names in os.walk(location) for name in names if name.endswith(".py")]
    fresh = [path for path in files if path not in seen]
    seen.update(fresh)
    for path in fresh:
        for imported in _imports_of(path):
            found = _find_spec(imported, directory)
            if found is not None and found.origin and _inside(found.origin, directory):
                _local_files(imported, directory, seen)
    return seen


def _imports_of(path):
    try:
        with open(path, encoding="utf-8") as file:
            return analyze(file.read()).imports
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, AnalysisError, RecursionError, MemoryError):
        return ()


def _inside(path, directory):
    return os.path.abspath(path).startswith(os.path.join(os.path.abspath(directory), ""))


def _absolute(name, package):
    """The module `from <name> import *` means in a module of `package` (`.sub` in pkg: pkg.sub)."""
    if not name.startswith("."):
        return name
    level = len(name) - len(name.lstrip("."))
    parts = package.split(".") if package else []
    if level - 1 > len(parts) or not package:
        return ""  # beyond the top: an import error, which the source cannot tell about
    base = ".".join(parts[: len(parts) - (level - 1)])
    return ".".join(part for part in (base, name.lstrip(".")) if part)


def _dunder_all(tree):
    """The literal `__all__ = [...]` of a module, else None (absent or computed)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
                return tuple(value)
            return None
    return None


def _find_spec(module, directory):
    """The spec an import of `module` would find, `directory` first, without importing anything."""
    if not module or module.startswith(".") or module in sys.builtin_module_names:
        return None
    search, spec = [directory, *sys.path], None
    for depth in range(module.count(".") + 1):
        spec = importlib.machinery.PathFinder.find_spec(".".join(module.split(".")[: depth + 1]), search)
        if spec is None:
            return None
        search = spec.submodule_search_locations or []
    return spec


def _source(module, directory):
    """(source text, the package its relative imports start from) of `module`, found as an import
    would find it, without importing anything; None if there is no Python source to read."""
    spec = _find_spec(module, directory)
    if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        return None
    package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
    try:
        return spec.loader.get_source(module), package
    except (OSError, ImportError, UnicodeDecodeError):
        return None
