"""How a value becomes a file and back: cloudpickle, with dill for what cloudpickle can't handle.

Large contiguous buffers (numpy arrays, pandas columns) travel out of band (pickle protocol 5):
written once straight from the value's memory after the pickle stream, and mapped back
copy-on-write on load, so a value is never held twice and loads at the speed pages are touched.
A file without such buffers is a plain pickle stream. Imports nothing from kfmagic: it runs
inside step processes and KFP containers.

Two things no pickler may do silently. A value that stands for a live resource (an open file, a
socket, a lock, a connection, a thread, a generator) is refused, whichever pickler is tried: a
copy of it would not be the resource (dill reopens a file in its mode: 'w' truncates it). And a
function or class the notebook defined (in `__main__`) is loaded into the namespace it will run
in, as the notebook would have it: functions look their globals up there when called, and classes
are found there by name (so `pickle.dumps` of their instances works in the step's own code).
"""

import gc
import importlib
import json
import mmap
import os
import pickle
import struct
import sys

PROTOCOL = 5
_TRAILER = struct.Struct("<Q8s")  # length of the buffer table, then the marker
_MARKER = b"KFMOOB01"
_ALIGN = 64
_PRIVATE = 0o600  # values may be private data: only their owner reads them

# What kind of live resource an object of a class is, by (module, qualname) of a class in its MRO.
# By name, so that checking imports nothing; in-memory files are values, not resources.
_VALUES = {("_io", "BytesIO"), ("_io", "StringIO")}
_LIVE = {
    ("_io", "_IOBase"): "an open file",
    ("socket", "socket"): "a network socket",
    ("_ssl", "_SSLContext"): "an SSL context",
    ("_thread", "lock"): "a lock",
    ("_thread", "RLock"): "a lock",
    ("threading", "Thread"): "a thread",
    ("builtins", "generator"): "a generator (a paused computation)",
    ("builtins", "coroutine"): "a coroutine",
    ("builtins", "async_generator"): "an async generator",
    ("builtins", "frame"): "a stack frame",
    ("builtins", "traceback"): "a traceback",
    ("sqlite3", "Connection"): "a database connection",
    ("sqlite3", "Cursor"): "a database cursor",
    ("subprocess", "Popen"): "a running process",
    ("mmap", "mmap"): "a memory-mapped file",
    ("select", "epoll"): "an event poller",
    ("selectors", "BaseSelector"): "an event selector",
    ("asyncio.events", "AbstractEventLoop"): "an event loop",
    ("multiprocessing.process", "BaseProcess"): "a process",
    ("multiprocessing.connection", "Connection"): "a connection between processes",
    ("concurrent.futures._base", "Executor"): "a pool of workers",
}
_live_kind_of_type = {}  # type -> what kind of live resource its objects are, or None


class SerializationError(Exception):
    """Neither cloudpickle nor dill could save the value; the message says why."""


class LiveResource(SerializationError):
    """The value is, or holds, a live resource; no pickler is tried after this."""

    def __init__(self, kind, type_name):
        self.kind, self.type_name = kind, type_name
        super().__init__(f"it holds {kind} ({type_name})")


class DamagedValue(Exception):
    """A value file that is missing, empty, truncated or not written by `dump`: the message says which."""


def live_kind(obj):
    """What kind of live resource `obj` is ("an open file", ...), or None for a value."""
    kind = type(obj)
    if kind not in _live_kind_of_type:
        names = [(cls.__module__, cls.__qualname__) for cls in kind.__mro__]
        found = None if any(name in _VALUES for name in names) else next(
            (_LIVE[name] for name in names if name in _LIVE), None
        )
        _live_kind_of_type[kind] = found
    return _live_kind_of_type[kind]


# Library objects that wrap native memory and have no pickle support, each with how to rebuild one
# from what it holds: (module, qualname) -> function returning a reduce tuple that names only the
# library's own callables, so a value file loads wherever the library is installed (the kernel,
# a step, a KFP container), without kfmagic. Kale passes these between steps; so must a run.
def _rebuild_dmatrix(matrix):
    """An xgboost DMatrix as its constructor called with its data (CSR: absent = missing) and info."""
    import functools

    info = {name: matrix.get_float_info(name) for name in _DMATRIX_FLOAT_INFO}
    info = {name: values for name, values in info.items() if len(values)}
    group_bounds = matrix.get_uint_info("group_ptr")
    if len(group_bounds) > 1:
        info["group"] = group_bounds[1:] - group_bounds[:-1]
    types_ = matrix.feature_types
    build = functools.partial(type(matrix), feature_names=matrix.feature_names, feature_types=types_,
                              enable_categorical=bool(types_) and "c" in types_, **info)
    return build, (matrix.get_data(),)


_DMATRIX_FLOAT_INFO = ("label", "weight", "base_margin", "label_lower_bound", "label_upper_bound", "feature_weights")
_REBUILT = {("xgboost.core", "DMatrix"): _rebuild_dmatrix}


def _reduce_native(obj):
    """How to rebuild `obj` if it is one of `_REBUILT`'s types, else NotImplemented."""
    kind = type(obj)
    rebuild = _REBUILT.get((kind.__module__, kind.__qualname__)) if isinstance(kind.__module__, str) else None
    return rebuild(obj) if rebuild else NotImplemented


def _refuse_live(obj):
    kind = live_kind(obj)
    if kind is not None and not any(obj is stream for stream in (sys.stdin, sys.stdout, sys.stderr)):
        raise LiveResource(kind, f"{type(obj).__module__}.{type(obj).__qualname__}")


def dump(value, path, by_name=None):
    """Write `value` to `path`; returns its size. On failure: no file left, SerializationError.

    The file appears whole or not at all (written aside, then renamed), so a reader that mapped
    an earlier version keeps its pages. `by_name` ({name: object} of the __main__ namespace) are
    saved as references to the loader's `__main__.<name>`, not copied: classes and functions that
    every step (and the kernel) defines alike, so instances keep their class.
    """
    partial = f"{path}.partial"
    errors = []
    try:
        try:
            size = _dump_out_of_band(_pickler(by_name or {}), value, partial)
        except (OSError, LiveResource):
            raise
        except Exception as error:  # cloudpickle cannot: try dill
            errors.append(f"cloudpickle: {type(error).__name__}: {error}")
            size = _dump_with_dill(value, partial, errors)
        if size is None:
            raise SerializationError("; ".join(errors))
        os.replace(partial, path)
        return size
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _open_private(path):
    """`path` opened for writing, readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE), "wb")


def _dump_with_dill(value, path, errors):
    """Size of the file dill wrote, or None (with the reason in `errors`) if it cannot."""
    try:
        import dill
    except ImportError:
        return None

    class Pickler(dill.Pickler):
        def reducer_override(self, obj):
            _refuse_live(obj)
            return _reduce_native(obj)

    try:
        with _open_private(path) as file:
            Pickler(file, protocol=PROTOCOL).dump(value)
            return file.tell()
    except (OSError, LiveResource):
        raise
    except Exception as error:
        errors.append(f"dill: {type(error).__name__}: {error}")
        return None


class _Main:
    """Pickles as `importlib.import_module("__main__")`: the loader's own __main__."""

    def __reduce__(self):
        return importlib.import_module, ("__main__",)


def _pickler(by_name):
    import cloudpickle

    known = {id(obj): (name, obj) for name, obj in by_name.items()}

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj):
            name, same = known.get(id(obj), (None, None))
            if same is obj:
                return getattr, (_Main(), name)
            _refuse_live(obj)
            rebuilt = _reduce_native(obj)
            return super().reducer_override(obj) if rebuilt is NotImplemented else rebuilt

    return Pickler


def _dump_out_of_band(pickler, value, path):
    buffers = []
    with _open_private(path) as file:
        pickler(file, protocol=PROTOCOL, buffer_callback=buffers.append).dump(value)
        if not buffers:
            return file.tell()
        table = []
        for buffer in buffers:
            file.write(b"\0" * (-file.tell() % _ALIGN))
            with buffer.raw() as view:
                table.append((file.tell(), view.nbytes))
                file.write(view)
        encoded = json.dumps(table).encode()
        file.write(encoded + _TRAILER.pack(len(encoded), _MARKER))
        return file.tell()


# Errors of a pickle stream that is cut short or is not one (the file, not the value's code, is
# wrong); ValueError and MemoryError too, which garbage after a valid header gives (a bad length).
_DAMAGE = (EOFError, pickle.UnpicklingError, struct.error, OverflowError, ValueError, MemoryError)


def load(path, namespace=None):
    """The value saved at `path` (the collector paused: unpickling many objects is faster).

    `namespace`: the `__main__` dict the value will be used in (a step's); the notebook's
    functions and classes in the value are bound to it (see the module docstring).
    DamagedValue when the file is not a whole value file; what the value's own classes raise
    (a missing library: ImportError) passes through.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            file = open(path, "rb")
        except FileNotFoundError:
            raise DamagedValue("the file is missing") from None
        with file:
            table = _buffer_table(file)
            buffers = None
            if table is not None:
                view = memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY))
                buffers = [view[start : start + size] for start, size in table]
            return _unpickler(file, namespace, buffers).load()  # reads the stream, which comes first
    except _DAMAGE as error:
        raise DamagedValue(f"the file is truncated or is not a value kfmagic wrote ({error})") from None
    finally:
        if enabled:
            gc.enable()


def _buffer_table(file):
    """[(offset, size)] of the out-of-band buffers, or None for a plain pickle file."""
    size = os.fstat(file.fileno()).st_size
    if size == 0:
        raise DamagedValue("the file is empty")
    protocol = file.read(2)
    if len(protocol) < 2 or protocol[0] != pickle.PROTO[0] or not 2 <= protocol[1] <= pickle.HIGHEST_PROTOCOL:
        raise DamagedValue("it does not start as a pickle does")
    if size < _TRAILER.size:
        return None
    file.seek(size - _TRAILER.size)
    length, marker = _TRAILER.unpack(file.read(_TRAILER.size))
    file.seek(0)
    if marker != _MARKER:
        return None
    try:
        if length > size - _TRAILER.size:
            raise ValueError("longer than the file")
        file.seek(size - _TRAILER.size - length)
        table = [(int(start), int(length)) for start, length in json.loads(file.read(length))]
    except (ValueError, TypeError) as error:
        raise DamagedValue(f"its table of buffers is broken ({error})") from None
    file.seek(0)
    end = size - _TRAILER.size - length
    if any(start < 0 or length < 0 or start + length > end for start, length in table) or table != sorted(table):
        raise DamagedValue("its table of buffers points outside the file")
    return table


# cloudpickle's constructors of what it pickles by value; the stream names them, so a loader can
# wrap them (public Unpickler.find_class) without cloudpickle offering a hook.
_CLOUDPICKLE = "cloudpickle.cloudpickle"


def _unpickler(file, namespace, buffers):
    unpickler = _NotebookUnpickler(file, buffers=buffers)
    unpickler.namespace = namespace
    return unpickler


class _NotebookUnpickler(pickle.Unpickler):
    """Binds the notebook's functions and classes in the value to `namespace` (when given).

    A function defined in `__main__` gets `namespace` as its globals; the globals it was pickled
    with only fill names `namespace` lacks. A class defined in `__main__` is made findable there
    by its name, unless that name is taken.
    """

    namespace = None

    def find_class(self, module, name):
        found = super().find_class(module, name)
        if self.namespace is None or module != _CLOUDPICKLE:
            return found
        wrap = {"_make_function": self._make_function, "_function_setstate": self._function_setstate,
                "_make_skeleton_class": self._make_class, "_make_skeleton_enum": self._make_class}.get(name)
        return (lambda *args: wrap(found, *args)) if wrap else found

    def _make_function(self, make, code, globals_, *rest):
        if globals_.get("__name__") == "__main__":
            globals_ = self.namespace
        return make(code, globals_, *rest)

    def _function_setstate(self, setstate, function, state):
        if function.__globals__ is self.namespace:
            attributes, slots = state
            for name, value in slots["__globals__"].items():
                self.namespace.setdefault(name, value)
            state = attributes, dict(slots, __globals__={})
        return setstate(function, state)

    def _make_class(self, make, *args):
        cls = make(*args)
        if cls.__module__ == "__main__":
            self.namespace.setdefault(cls.__name__, cls)
        return cls
