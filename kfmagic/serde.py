"""How a value becomes a file and back: cloudpickle, with dill for what cloudpickle can't handle.

Both write plain pickle streams (protocol 5), so `load` is one `pickle.load` whichever wrote it.
Imports nothing from kfmagic: it runs inside step processes and KFP containers.
"""

import os
import pickle

PROTOCOL = 5


class SerializationError(Exception):
    """Neither cloudpickle nor dill could save the value; the message says why."""


def dump(value, path):
    """Write `value` to `path`; on failure leave no partial file and raise SerializationError."""
    import cloudpickle

    errors = []
    for pickler in (cloudpickle, _dill()):
        if pickler is None:
            continue
        try:
            with open(path, "wb") as file:
                pickler.dump(value, file, protocol=PROTOCOL)
            return os.path.getsize(path)
        except Exception as error:  # any pickling failure: try the next pickler
            errors.append(f"{pickler.__name__}: {type(error).__name__}: {error}")
    if os.path.exists(path):
        os.remove(path)
    raise SerializationError("; ".join(errors))


def load(path):
    with open(path, "rb") as file:
        return pickle.load(file)


def _dill():
    try:
        import dill
    except ImportError:
        return None
    return dill
