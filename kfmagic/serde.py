"""How a value becomes a file and back: cloudpickle, with dill for what cloudpickle can't handle.

Large contiguous buffers (numpy arrays, pandas columns) travel out of band (pickle protocol 5):
written once straight from the value's memory after the pickle stream, and mapped back
copy-on-write on load, so a value is never held twice and loads at the speed pages are touched.
A file without such buffers is a plain pickle stream. Imports nothing from kfmagic: it runs
inside step processes and KFP containers.
"""

import gc
import importlib
import json
import mmap
import os
import pickle
import struct

PROTOCOL = 5
_TRAILER = struct.Struct("<Q8s")  # length of the buffer table, then the marker
_MARKER = b"KFMOOB01"
_ALIGN = 64


class SerializationError(Exception):
    """Neither cloudpickle nor dill could save the value; the message says why."""


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
        except OSError:
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


def _dump_with_dill(value, path, errors):
    """Size of the file dill wrote, or None (with the reason in `errors`) if it cannot."""
    try:
        import dill
    except ImportError:
        return None
    try:
        with open(path, "wb") as file:
            dill.dump(value, file, protocol=PROTOCOL)
            return file.tell()
    except OSError:
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
            return super().reducer_override(obj)

    return Pickler


def _dump_out_of_band(pickler, value, path):
    buffers = []
    with open(path, "wb") as file:
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


def load(path):
    """The value saved at `path` (the collector paused: unpickling many objects is faster)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with open(path, "rb") as file:
            table = _buffer_table(file)
            if table is None:
                return pickle.load(file)
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        view = memoryview(mapped)
        stream_end = table[0][0] if table else len(mapped)
        return pickle.loads(view[:stream_end], buffers=[view[start : start + size] for start, size in table])
    finally:
        if enabled:
            gc.enable()


def _buffer_table(file):
    """[(offset, size)] of the out-of-band buffers, or None for a plain pickle file."""
    size = os.fstat(file.fileno()).st_size
    if size < _TRAILER.size:
        return None
    file.seek(size - _TRAILER.size)
    length, marker = _TRAILER.unpack(file.read(_TRAILER.size))
    file.seek(0)
    if marker != _MARKER:
        return None
    file.seek(size - _TRAILER.size - length)
    table = json.loads(file.read(length))
    file.seek(0)
    return table
