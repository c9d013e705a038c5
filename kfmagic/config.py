"""Where the Kubeflow Pipelines API is, how to authenticate, where cluster runs keep their records
(the run store), and errors that say what to do.

Settings live in the kernel's memory only: a token or cookie is never written to a file, a log,
a compiled pipeline or displayed output (`repr` hides them). Without settings, kfp's own
defaults apply: KF_PIPELINES_ENDPOINT, KF_PIPELINES_SA_TOKEN_PATH, and inside a cluster the
in-cluster service address; the run store is KFMAGIC_STORE's, if set (its credentials are the
storage's own environment variables, read by fsspec).
"""

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field

from .errors import KfmagicError

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
# Seconds to wait for the API to connect and answer; an unanswered request must not hang the kernel.
REQUEST_TIMEOUT = (10, 60)


class KfpConnectionError(KfmagicError):
    """The Kubeflow Pipelines API could not be used; the message says why and what to do."""


@dataclass(frozen=True)
class Connection:
    host: str | None = None
    namespace: str | None = None
    experiment: str | None = None
    token: str | None = field(default=None, repr=False)
    token_path: str | None = None
    cookies: str | None = field(default=None, repr=False)
    store: str | None = None  # the run store's URL (store.py)

    def __post_init__(self):
        given = [name for name in ("token", "token_path", "cookies") if getattr(self, name)]
        if len(given) > 1:
            raise KfmagicError(
                f"Give one of --token, --token-path, --cookies (got {', '.join(given)})."
            )
        if self.token_path and not os.path.exists(self.token_path):
            raise KfmagicError(f"--token-path {self.token_path}: no such file.")
        if self.store:
            from .store import check_url

            object.__setattr__(self, "store", check_url(self.store))

    @property
    def run_store(self):
        """Where cluster runs keep their records: the configured store, else KFMAGIC_STORE's, else None."""
        from .store import STORE_ENV, check_url

        if self.store:
            return self.store
        return check_url(os.environ[STORE_ENV], where=f"${STORE_ENV}") if os.environ.get(STORE_ENV) else None

    @property
    def endpoint(self):
        """The API's URL: the configured host, else KF_PIPELINES_ENDPOINT, else None (in-cluster)."""
        return (self.host or os.environ.get(ENDPOINT_ENV) or "").rstrip("/") or None

    @property
    def ui_url(self):
        return (os.environ.get(UI_ENDPOINT_ENV) or self.endpoint or "/pipeline").rstrip("/")

    def run_url(self, run_id):
        return f"{self.ui_url}/#/runs/details/{run_id}"

    def describe(self):
        """What is configured, safe to show: credentials are named, never shown."""
        auth = (
            "token" if self.token else f"token file {self.token_path}" if self.token_path
            else "cookies" if self.cookies else f"token file ${TOKEN_PATH_ENV}" if os.environ.get(TOKEN_PATH_ENV)
            else "no credentials"
        )
        where = self.endpoint or "the in-cluster address"
        extra = "".join(f", {k} {v}" for k, v in (("namespace", self.namespace), ("experiment", self.experiment)) if v)
        try:
            stored = f"; runs keep their records in {self.run_store}" if self.run_store else ""
        except KfmagicError as error:
            stored = f"; no run store: {error}"
        return f"Kubeflow Pipelines at {where} ({auth}{extra}){stored}"

    def __repr__(self):
        return f"<Connection: {self.describe()}>"

    def client(self):
        """A kfp.Client for these settings, checked with one health request (kfp retries for 25 s)."""
        import kfp
        from kfp.client import set_volume_credentials

        class _Client(kfp.Client):
            def get_kfp_healthz(self, sleep_duration=5):
                _bound_requests(self)  # kfp.Client.__init__ asks for health before it returns the client
                return self._healthz_api.healthz_service_get_healthz()

        credentials = None
        token_path = self.token_path or (None if self.token or self.cookies else os.environ.get(TOKEN_PATH_ENV))
        if token_path:
            credentials = set_volume_credentials.ServiceAccountTokenVolumeCredentials(path=token_path)
        kwargs = dict(existing_token=self.token, cookies=self.cookies, credentials=credentials)
        if self.namespace:
            kwargs["namespace"] = self.namespace
        if not self.endpoint and not _kubernetes_known():
            raise KfpConnectionError(
                "No Kubeflow Pipelines host is configured, and kfp has no cluster to find one in (not inside a "
                "cluster, no kube config): give it with `%pipeline config --host URL`, --host URL, or "
                f"{ENDPOINT_ENV}; or run here with --runner local."
            )
        # kfp.Client prints "Failed to load kube config." where it has none: the errors below say more
        with calling(self, "connecting"), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2": kfmagic needs v2 too
            client = _Client(host=self.endpoint, **kwargs)
            _bound_requests(client)  # also when kfp skipped its health check (a namespace given or remembered)
            if self.namespace:  # kfp skips its health check when given a namespace; reachability matters
                client.get_kfp_healthz()
        return client


def _kubernetes_known():
    """Whether kfp can find Kubeflow Pipelines without a host: inside a cluster, or from a kube config."""
    kube_config = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or any(
        os.path.isfile(path) for path in kube_config.split(os.pathsep)
    )


def _bound_requests(client):
    """Give every API request a timeout, once (kfp's generated client sends none and can wait forever).

    A request that timed out is not retried: urllib3 would retry a GET three times, so an unanswered
    read would take four times REQUEST_TIMEOUT. Redirects (a login page) are still followed.
    """
    import urllib3

    pool = client._healthz_api.api_client.rest_client.pool_manager
    if getattr(pool, "kfmagic_bounded", False):
        return
    request = pool.request

    def request_with_timeout(method, url, *args, timeout=None, **kwargs):
        connect, read = REQUEST_TIMEOUT
        kwargs.setdefault("retries", urllib3.Retry(total=3, connect=0, read=0))
        return request(method, url, *args, timeout=timeout or urllib3.Timeout(connect=connect, read=read), **kwargs)

    pool.request, pool.kfmagic_bounded = request_with_timeout, True


def _server_message(body):
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return (body or "").strip()[:500] if isinstance(body, str) else ""
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or data)[:500]
    return str(data)[:500]


def explain(error, connection, action):
    """A KfpConnectionError saying what went wrong while `action`, and what to do; None if unknown."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    where = connection.endpoint or "the in-cluster address"
    if isinstance(error, ApiException):
        status, message = error.status, _server_message(error.body)
        said = f": {message}" if message else ""
        if status in (401, 403):
            fix = (
                "Give credentials with `%pipeline config --host URL --token T` (or --token-path FILE, or "
                "--cookies 'authservice_session=...' copied from a logged-in browser)."
                if status == 401 else
                f"The credentials are valid but lack access{' to namespace ' + connection.namespace if connection.namespace else ''}: "
                "ask for a role in the profile, or use --namespace with your own."
            )
            return KfpConnectionError(f"Kubeflow Pipelines at {where} refused {action} (HTTP {status}){said}. {fix}")
        if status == 404:
            return KfpConnectionError(
                f"Kubeflow Pipelines at {where}: not found while {action} (HTTP 404){said}. Check that --host is "
                "the Pipelines endpoint (e.g. http://localhost:8080 after `kubectl port-forward -n kubeflow "
                "svc/ml-pipeline-ui 8080:80`), and that the run or pipeline exists."
            )
        if status >= 500:
            return KfpConnectionError(
                f"Kubeflow Pipelines at {where} failed while {action} (HTTP {status}, a server error){said}. "
                "Try again; if it persists, check the ml-pipeline deployment's logs."
            )
        return KfpConnectionError(f"Kubeflow Pipelines at {where} rejected {action} (HTTP {status}){said}")
    if isinstance(error, (urllib3.exceptions.TimeoutError, TimeoutError)) or "timed out" in str(error).lower():
        return KfpConnectionError(
            f"Kubeflow Pipelines at {where} did not answer in time while {action}. Check that the cluster is up "
            "and the address is right (a port-forward that died looks like this), then try again."
        )
    if isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, OSError)):
        return KfpConnectionError(
            f"Cannot reach Kubeflow Pipelines at {where} while {action}: {type(error).__name__}. Check the address "
            "(`%pipeline config --host URL`), that the cluster is up, and any port-forward "
            "(`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)."
        )
    return None


class calling:
    """`with calling(connection, 'uploading the pipeline'):` turns API failures into clear errors."""

    def __init__(self, connection, action):
        self.connection, self.action = connection, action

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, KfmagicError):
            return False
        explained = explain(error, self.connection, self.action)
        if explained is None:
            return False
        raise explained from None
