"""Where kfmagic keeps its files in the working directory (the notebook's folder), and how.

A leaf module: backends write runs here, and compile-time checks (portability) read past runs
from here, without either depending on the other.

Everything under `.kfmagic/` is its owner's alone (folders 0700, files 0600): values are pickles
of the notebook's data, and loading a pickle runs code, so no other local user may read them or
put one there. `.kfmagic/.gitignore` keeps it all out of `git status`. A file that cannot be
written (a full disk, no permission) is one KfmagicError naming what it was; a step's result file
that is not what the runtime writes is an UnreadableResult, never a half-trusted dict.
"""

import contextlib
import errno
import json
import os
import stat
import tempfile

from .errors import KfmagicError
from .runtime import RESULT_FILE

KFMAGIC_DIR = ".kfmagic"
# Each run's directory: `<RUNS_DIR>/<run id>/<step>/` holds the step's spec, result and outputs.
RUNS_DIR = os.path.join(KFMAGIC_DIR, "runs")
PRIVATE_DIR_MODE, PRIVATE_FILE_MODE = 0o700, 0o600

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class UnreadableResult(ValueError):
    """A step's result file that is not what kfmagic's runtime writes; the message says how."""


@contextlib.contextmanager
def writing(what, path):
    """Turn an OSError while writing `what` at `path` into one message: what did not fit, and what to do."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL:
            fix = "Free space on that disk (or move the notebook's folder to a larger one) and run again."
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "kfmagic writes its runs in the notebook's folder: make it writable by you, or work in one that is."
        else:
            fix = "Check that the notebook's folder can be written, then run again."
        raise KfmagicError(f"{error.strerror or error} while writing {what} ({path}). {fix}") from None


def private_dir(path, what):
    """Folder `path`, created if missing, readable by its owner only (an existing one is made so)."""
    with writing(what, path):
        os.makedirs(path, mode=PRIVATE_DIR_MODE, exist_ok=True)
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def write_private(path, text, what):
    """Write `text` to `path` whole, 0600: written aside (a file of this call's own, so writers at
    the same time never mix), then renamed; a full disk leaves no half file."""
    with writing(what, path):
        fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".partial")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(partial, path)
        finally:
            if os.path.lexists(partial):
                os.remove(partial)


def write_private_json(path, data, what):
    """`data` as JSON in `path`, as `write_private` writes it."""
    write_private(path, json.dumps(data), what)


def make_private(path):
    """Every folder under `path` 0700 and every file 0600: for what other tools wrote there
    (kfp.local's artifacts, the compiled pipeline). Links are left alone, never followed."""
    for folder, _, files in os.walk(path):
        os.chmod(folder, PRIVATE_DIR_MODE)
        for name in files:
            file = os.path.join(folder, name)
            if not os.path.islink(file):
                os.chmod(file, PRIVATE_FILE_MODE)


def runs_dir(workdir):
    """`<workdir>/.kfmagic/runs`, both folders private, `.kfmagic/.gitignore` ignoring everything."""
    kfmagic_dir = private_dir(os.path.join(workdir, KFMAGIC_DIR), "kfmagic's folder")
    ignore = os.path.join(kfmagic_dir, ".gitignore")
    if not os.path.exists(ignore):
        write_private(ignore, "# kfmagic's runs: pickled data, never to be committed\n*\n", "kfmagic's .gitignore")
    return private_dir(os.path.join(workdir, RUNS_DIR), "the folder of kfmagic's runs")


def inside(path, folder):
    """Whether `path`, every link resolved, lies inside `folder` (also resolved)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real != root and os.path.commonpath([real, root]) == root


def step_result(out_dir):
    """The result a step's runtime wrote in `out_dir`, checked to be what the runtime writes;
    None while there is none. UnreadableResult otherwise (a link, not JSON, the wrong shape)."""
    path = os.path.join(out_dir, RESULT_FILE)
    try:  # no link followed, and a FIFO or device is refused before anything blocks on it
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise UnreadableResult(f"it cannot be opened as a file ({error.strerror or error})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableResult("it is not a regular file")
    with os.fdopen(fd, encoding="utf-8") as file:
        try:
            result = json.load(file)
        except (ValueError, RecursionError) as error:  # not JSON, not UTF-8, nested too deep
            raise UnreadableResult(f"it is not JSON ({error})") from None
    problem = _result_problem(result)
    if problem:
        raise UnreadableResult(problem)
    return result


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _saved_entry(info):
    """{type, bytes[, path]}: what the runtime records for a saved value (path: kfp-local's artifact)."""
    return (
        isinstance(info, dict) and isinstance(info.get("type"), str) and isinstance(info.get("bytes"), int)
        and not isinstance(info["bytes"], bool)
        and ("path" not in info or isinstance(info["path"], str) and os.path.isabs(info["path"]))
    )


# runtime.py's result (with component.py's additions on kfp-local): each field's check.
_RESULT_FIELDS = {
    "state": lambda value: value in ("SUCCEEDED", "FAILED"),
    "error": lambda value: value is None or isinstance(value, str),
    "saved": lambda value: _entries(value, _saved_entry),
    "skipped": lambda value: _entries(value, lambda why: isinstance(why, str)),
    "metrics": lambda value: _entries(value, _number),
}
_OPTIONAL_FIELDS = {
    "started": _number, "finished": _number,
    "random": lambda value: isinstance(value, list) and all(isinstance(name, str) for name in value),
}


def _entries(value, check):
    """A dict of variable names, each entry passing `check`."""
    return isinstance(value, dict) and all(
        isinstance(name, str) and name.isidentifier() and check(entry) for name, entry in value.items()
    )


def _result_problem(result):
    """What makes `result` other than what the runtime writes, or None."""
    if not isinstance(result, dict):
        return f"it holds a JSON {type(result).__name__}, not the runtime's result object"
    for field, check in _RESULT_FIELDS.items():
        if field not in result:
            return f"it has no {field!r}"
        if not check(result[field]):
            return f"its {field!r} is not what the runtime writes ({json.dumps(result[field])[:80]})"
    for field, check in _OPTIONAL_FIELDS.items():
        if field in result and not check(result[field]):
            return f"its {field!r} is not what the runtime writes ({json.dumps(result[field])[:80]})"
    return None
