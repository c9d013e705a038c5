"""A run's store: where each step's record (its result, with metrics), its log and the values it
saved live, and where `Run.metrics`, `Run.load` and `Run.logs` read them from.

Every run keeps one layout, `<root>/<step>/{result.json, log.txt, outputs/<var>.pkl}`:
- a run here (local, kfp-local) in its folder `.kfmagic/runs/<run id>/` (FolderStore);
- a run on Kubeflow Pipelines in object storage (the pipeline root's MinIO, S3, GCS, ...), at
  `<store URL>/<pipeline>/<kfmagic run id>/`, written by each step's pod (component.py) and read
  here through fsspec (ObjectStore). What the kernel reads is downloaded into the submission's own
  private folder first, so a value is loaded, as any run's, only from inside its run's folder.

Credentials are fsspec's: the standard environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL; GOOGLE_APPLICATION_CREDENTIALS), never a URL, so
they appear in no compiled pipeline, run folder or message.
"""

import contextlib
import os
import shutil
import tempfile

from . import workspace
from .component import LOG_FILE, STEPS_FILE
from .errors import KfmagicError
from .runtime import OUTPUTS_DIR, RESULT_FILE
from .step_options import STEP_NAME

STORE_ENV = "KFMAGIC_STORE"
INSTALL_HINT = "pip install 'kfmagic[store]'"
CREDENTIALS_HINT = (
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO or another S3-compatible "
    "server) for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://"
)
_FILE_NAMES = {RESULT_FILE, LOG_FILE, STEPS_FILE}


def check_url(url, where="--store"):
    """The store URL with no trailing '/', if fsspec can reach it from here; else one KfmagicError
    saying what to write or install. A URL holding credentials is refused without being shown."""
    scheme, sep, rest = str(url).partition("://")
    if "@" in rest.split("/", 1)[0]:
        raise KfmagicError(
            f"{where}: the store URL holds credentials (before '@'), which would be written into the compiled "
            f"pipeline. Give the URL without them, and the credentials in the environment: {CREDENTIALS_HINT}."
        )
    if not sep or not scheme.isidentifier() or not rest.strip("/"):
        raise KfmagicError(
            f"{where} {url}: give the run store as a URL: s3://BUCKET/PREFIX (S3, MinIO), gs://BUCKET/PREFIX "
            "(GCS), or file:///PATH on a volume that this machine and the steps' pods share."
        )
    try:
        import fsspec
    except ImportError:
        raise KfmagicError(f"{where} {url}: a run store is read and written with fsspec: {INSTALL_HINT}.") from None
    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise KfmagicError(
            f"{where} {url}: fsspec knows no storage called {scheme!r}; use s3:// (S3, MinIO), gs:// (GCS) "
            "or file://."
        ) from None
    except ImportError:
        module = implementation_module(scheme)
        raise KfmagicError(
            f"{where} {url}: fsspec reaches {scheme}:// through {module}, which is not installed here: "
            f"pip install {module} (or {INSTALL_HINT})."
        ) from None
    return url.rstrip("/")


def implementation_module(scheme):
    """The top-level module fsspec opens `scheme://` with (s3fs for s3, fsspec itself for file)."""
    from fsspec.registry import known_implementations

    return known_implementations.get(scheme, {}).get("class", "fsspec").split(".", 1)[0]


def modules(url):
    """What a step's pod imports to write to the store at `url`: what it must have installed."""
    return list(dict.fromkeys(["fsspec", implementation_module(url.partition("://")[0])]))


def pipeline_location(url, pipeline):
    """Where a pipeline's runs keep their records: the value of the compiled `kfmagic_store` parameter."""
    return f"{url}/{pipeline}"


def run_location(location, run_id):
    return f"{location}/{run_id}"


def _checked(parts):
    """A path under a run's store made only of a step name, a known file name, `outputs` and a
    variable's file: nothing read from a file or the network may lead elsewhere."""
    step, *rest = parts
    if step in _FILE_NAMES and not rest:
        return parts
    good = STEP_NAME.match(step) and (
        rest in ([RESULT_FILE], [LOG_FILE])
        or (len(rest) == 2 and rest[0] == OUTPUTS_DIR and rest[1].endswith(".pkl") and rest[1][:-4].isidentifier())
    )
    if not good:
        raise KfmagicError(f"Not a path of a run's store: {'/'.join(parts)!r}.")
    return parts


class FolderStore:
    """A run kept here: its folder, as the local backends write it."""

    def __init__(self, run_dir):
        self.local_dir = run_dir
        self.where = run_dir

    def fetch(self, *parts, fresh=False):
        """The local path of `<step>/<file>` in the run, or None if the run has none (always the
        current file: `fresh` is for stores that keep copies)."""
        path = os.path.join(self.local_dir, *_checked(parts))
        return path if os.path.lexists(path) else None

    def steps(self):
        """The steps that have a folder in the run."""
        names = os.listdir(self.local_dir) if os.path.isdir(self.local_dir) else ()
        return sorted(name for name in names if STEP_NAME.match(name) and os.path.isdir(os.path.join(self.local_dir, name)))


class ObjectStore:
    """A cluster run's records in object storage, each downloaded on request into `local_dir`
    (the submission's private folder: folders 0700, files 0600) and read from there."""

    def __init__(self, url, local_dir):
        self.where = url
        self.local_dir = local_dir
        self._fs = None

    def _filesystem(self):
        if self._fs is None:
            import fsspec

            # a new client, reading the environment as it is now (fsspec would reuse one made before)
            self._fs, self._root = fsspec.core.url_to_fs(self.where, skip_instance_cache=True)
        return self._fs, self._root

    def fetch(self, *parts, fresh=False):
        """The local copy of `<step>/<file>` of the run, downloaded (again if `fresh`, or if it is not
        here yet); None if the store has none."""
        parts = _checked(parts)
        local = os.path.join(self.local_dir, *parts)
        if os.path.isfile(local) and not os.path.islink(local) and not fresh:
            return local
        with self._reading("/".join(parts)):
            fs, root = self._filesystem()
            remote = "/".join([root, *parts])
            try:
                source = fs.open(remote, "rb")
            except FileNotFoundError:
                return None
            with source:
                for level in range(len(parts)):  # the run's folder, then the step's and `outputs`
                    workspace.private_dir(os.path.join(self.local_dir, *parts[:level]), "a run's downloaded records")
                _download(source, os.path.dirname(local), local)
        return local

    @contextlib.contextmanager
    def _reading(self, what):
        """What the storage library raises meanwhile, as one message saying what to check."""
        try:
            yield
        except KfmagicError:
            raise
        except ImportError as error:
            raise KfmagicError(f"Cannot read the run store {self.where}: {error}. {INSTALL_HINT}.") from None
        except Exception as error:  # noqa: BLE001 - fsspec's backends raise their own kinds
            said = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise KfmagicError(
                f"Cannot read {what} from the run store {self.where}: {type(error).__name__}"
                f"{': ' + said if said else ''}. Check the URL, that this machine reaches it, and the credentials "
                f"in the environment: {CREDENTIALS_HINT}."
            ) from None


class CombinationStore:
    """The records of one combination of a sweep run on the cluster: its own steps' under the run's
    `c<N>/` (`own`), the shared steps', which ran once for every combination, in the run's (`shared`)."""

    def __init__(self, shared, own, own_steps):
        self.shared, self.own, self.own_steps = shared, own, set(own_steps)
        self.where = own.where

    def fetch(self, *parts, fresh=False):
        return (self.own if parts[0] in self.own_steps else self.shared).fetch(*parts, fresh=fresh)


def _download(source, folder, local):
    """`source` copied whole into `local`, 0600: written aside, then renamed."""
    with workspace.writing("a file downloaded from the run store", local):
        fd, partial = tempfile.mkstemp(dir=folder, prefix=".download.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as file:
                shutil.copyfileobj(source, file, 1 << 20)
            os.replace(partial, local)
        finally:
            if os.path.lexists(partial):
                os.remove(partial)
