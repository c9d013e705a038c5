"""Which files a step's code reads and writes, by the path literals it hands to well-known calls.

Steps also talk through files: a cell saves `df.to_csv('clean.csv')` or `joblib.dump(model,
'model.pkl')` and a later cell reads it back. Top to bottom, the reader runs after the writer; as a
pipeline, only what orders the steps does. The planner orders a step that reads (or writes) a path
after the latest earlier step that writes it, and a writer after the earlier steps that read the
path it overwrites; the cache keys a step on the files it reads. Only literal paths relative to the
working folder are seen, or a name the same code binds to such literals (`path = 'x.csv'`, `for name
in ('a.csv', 'b.json'):`); `open(f'{name}.csv')` is not. Pure, stdlib only.
"""

import ast
import functools
import os

# Calls that read a file named by their first argument (`pd.read_csv`, `np.load`, `joblib.load`).
READERS = {"open", "Path", "loadtxt", "genfromtxt", "fromfile", "imread", "load", "load_workbook"}
# Calls that write a file named by their first argument (`df.to_csv('x.csv')`, `np.save('x', a)`, `plt.savefig`).
_WRITERS = {
    "save", "savez", "savez_compressed", "savetxt", "savefig", "imsave", "imwrite", "to_csv", "to_json", "to_html",
    "to_pickle", "to_parquet", "to_excel", "to_feather", "to_hdf", "to_latex", "to_markdown", "to_stata", "to_xml",
    "to_orc", "to_netcdf", "to_file",
}
# ... by their second argument (`joblib.dump(model, 'model.pkl')`).
_SECOND_ARGUMENT_WRITERS = {"dump"}
_WRITE_MODES = set("wax+")


def relative_literal(node):
    """The path `node` spells if it is a string literal relative to the working folder, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        path = node.value
        if path and not os.path.isabs(path) and "://" not in path and not path.startswith("~"):
            return path
    return None


def _name(call):
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def _mode(call):
    given = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return given.value if isinstance(given, ast.Constant) and isinstance(given.value, str) else "r"


def _named_literals(tree):
    """{name: [literal path, ...]} for the names `tree` binds to string literals: `path = 'x.csv'`,
    `for name in ('a.csv', 'b.json'):` (a name bound so anywhere, to any of them)."""
    named = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, values = node.targets[0], [node.value]
        elif isinstance(node, ast.For) and isinstance(node.iter, (ast.Tuple, ast.List)):
            target, values = node.target, node.iter.elts
        else:
            continue
        found = [relative_literal(value) for value in values]
        if isinstance(target, ast.Name) and found and None not in found:
            named.setdefault(target.id, []).extend(found)
    return named


@functools.lru_cache(maxsize=1024)
def paths(code):
    """(paths read, paths written) by `code`, each in order of appearance; ((), ()) if it does not
    parse. Remembered: the plan orders steps by them and the cache keys and records each step by them."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # too deeply nested: the plan says so
        return (), ()
    named = _named_literals(tree)
    reads, writes = {}, {}
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        name, args = _name(call), call.args
        if not name or not args:
            continue
        if name == "open" and _WRITE_MODES & set(_mode(call)):
            target = writes
        elif name in READERS or name.startswith("read_"):
            target = reads
        elif name in _WRITERS:
            target = writes
        elif name in _SECOND_ARGUMENT_WRITERS and len(args) > 1:
            target, args = writes, args[1:]
        else:
            continue
        found = named.get(args[0].id, []) if isinstance(args[0], ast.Name) else [relative_literal(args[0])]
        for path in found:
            if path is not None:
                target.setdefault(os.path.normpath(path))
    return tuple(reads), tuple(writes)


def step_paths(codes):
    """(paths read, paths written) by the code of a step's cells."""
    found = [paths(code) for code in codes]
    return [p for reads, _ in found for p in reads], [p for _, writes in found for p in writes]


def file_edges(steps):
    """{step: the earlier steps it must run after, for the files they share}; `steps`: (name, codes)
    in notebook order."""
    edges, last_writer, readers = {}, {}, {}  # readers: path -> steps that read it since it was last written
    for name, codes in steps:
        reads, writes = step_paths(codes)
        needs = edges.setdefault(name, set())
        for path in reads:
            needs.update([last_writer[path]] if path in last_writer else [])
        for path in writes:
            needs.update([last_writer[path]] if path in last_writer else [])
            needs.update(readers.pop(path, ()))
        for path in reads:
            readers.setdefault(path, set()).add(name)
        for path in writes:
            last_writer[path] = name
            readers.pop(path, None)
        needs.discard(name)
    return edges
