"""A loopback Kubeflow Pipelines (KFP) API server that really runs pipelines.

This module is the *cluster stand-in* for the test suite.  No Kubernetes (and
no Docker) can run where these tests run, so instead of a real KFP deployment
we start a small HTTP server on ``127.0.0.1`` that speaks the subset of the KFP
**v2beta1 REST API** used by the real ``kfp.Client`` (checked against
kfp / kfp-server-api 2.17.3), and that really EXECUTES every submitted pipeline
with ``kfp.local`` (``SubprocessRunner(use_venv=False)``).  Tests therefore
submit with the unmodified ``kfp.Client`` and can then assert that a run really
ran, and read the artifacts it produced from disk::

    from kfp_server import KfpServer        # or: from tests.kfp_server import ...

    with KfpServer(root=tmp_path) as server:
        client = kfp.Client(host=server.url)   # "http://127.0.0.1:<port>"
        run = client.create_run_from_pipeline_package('p.yaml', {'n': 3})
        client.wait_for_run_completion(run.run_id, timeout=60, sleep_duration=0.2)
        server.artifact_path(run.run_id, 'train', 'model').read_text()

How a run is executed
---------------------
* ``POST /apis/v2beta1/runs`` stores the run as ``PENDING`` and starts a
  background thread.  Runs execute one at a time by default
  (``max_concurrent_runs=1``).
* Each run is executed in its own *worker process* (this very file run as a
  script): the worker calls ``kfp.local.init(SubprocessRunner(use_venv=False),
  pipeline_root=<root>/<run_id>)``, loads the pipeline IR with
  ``kfp.components.load_component_from_file`` (a ``YamlComponent`` of the whole
  pipeline) and calls it with the run parameters as keyword arguments; this
  is kfp's own public local-execution path for a compiled pipeline.  Only the
  first YAML document (the PipelineSpec) is used; a platform spec
  (kfp-kubernetes: secrets, volumes, ...) is ignored.  A separate process
  keeps kfp.local's process-global configuration out of the test process,
  captures all logs in a per-run file (``server.run_log(run_id)``) and makes
  ``:terminate`` a real interruption (the worker's process group is killed).
* Per-task states: the worker wraps kfp.local's per-task entry point
  (``kfp.local.orchestrator.task_executor.execute_single_task``; fallback
  ``kfp.local.task_dispatcher.run_single_task_implementation`` for older kfp)
  and appends a JSON line per task start / end to ``events.jsonl``; the server
  tails that file and exposes the tasks as ``run_details.task_details``
  (``display_name``, ``state``, ``create_time``/``start_time``/``end_time``,
  ``state_history``, ``error``).  Tasks appear when they start (as pods do);
  tasks that never started (downstream of a failure) are not listed.
* Run states: PENDING -> RUNNING -> SUCCEEDED | FAILED, or CANCELED as soon
  as ``:terminate`` is called (tasks still running become CANCELED).
* Outputs: kfp.local's ``pipeline_root`` for a run is ``<root>/<run_id>/``
  (``server.run_outputs(run_id)``); it persists (kfp.local only deletes its
  workspace_root).  Inside it kfp.local writes
  ``<pipeline-name>-<timestamp>/<component-name>/<output>``.  Bookkeeping
  (pipeline IR, job, events, result, log) lives in ``<root>/.kfp_server/<run_id>/``.

Differences from a real cluster that tests should know about
----------------------------------------------------------
* Only lightweight Python components run (kfp.local's SubprocessRunner
  limitation); they run with this interpreter (``use_venv=False``), so
  ``packages_to_install`` is pip-installed into the current environment: use
  ``install_kfp_package=False`` and no extra packages in test pipelines.
* ``runtime_config.pipeline_root`` sent by the client is recorded but ignored;
  the response shows the local pipeline root actually used.
* Caching is off unless ``KfpServer(enable_caching=True)``.
* kfp.local runs one task at a time and stops at the first failed task:
  tasks that do not depend on it but had not started yet never start (a
  real cluster runs them), so which independent tasks ran depends on
  kfp.local's order.
* Run parameters are converted to the pipeline's declared input types before
  kfp.local sees them (an ``int`` for a ``float`` input becomes a float), as
  the real backend does; kfp.local alone would reject the run.
* ``run_details.task_details`` lists one entry per executed task
  (``display_name`` = the task's name in the DAG); the driver/DAG/root entries
  a real Argo-backed server adds are not emulated.
* ``kfp.Client.wait_for_run_completion`` does not treat CANCELED as final
  (kfp 2.17.3 ``finish_states = ['succeeded', 'failed', 'skipped', 'error']``)
  and sleeps 5 s by default: pass ``sleep_duration=`` or use
  ``server.wait_for_run``.

Helpers for assertions
----------------------
``server.run_outputs(run_id)`` (Path), ``server.artifact_path(run_id, task,
output)``, ``server.task_outputs(run_id)``, ``server.pipeline_outputs(run_id)``,
``server.run_log(run_id)``, ``server.get_run(run_id)`` (the API dict) and
``server.wait_for_run(run_id, timeout)`` (final state *and* worker gone).
``server.pipelines`` / ``versions`` / ``experiments`` / ``runs`` hold the
server's state.

Auth and error-injection hooks
------------------------------
* ``server.requests``: list of ``(method, path, headers)`` for every request
  (``headers`` is a dict with case-insensitive ``get``/``[]``/``in``);
  ``server.request_details`` additionally holds query, body and status.
* ``KfpServer(require_token='abc')`` answers 401 unless the request carries
  ``Authorization: Bearer abc``.  ``/apis/v2beta1/healthz`` is exempt by
  default (``token_exempt_paths``) because ``kfp.Client.__init__`` calls
  healthz and retries it 5 times with 5 s sleeps on any error, then raises
  ``TimeoutError`` (not the 401).  ``server.require_token`` may be changed
  at any time.
* ``server.fail_next(path_regex, status, body=None, method=None, times=1)``
  answers the next matching request(s) with that status (checked before
  auth and routing).
* ``server.stall_next(path_regex, seconds=None, method=None, times=1)``
  holds the next matching request(s) unanswered for ``seconds`` (``None``:
  until the server stops), as a wedged or overloaded API server does, then
  handles them as usual (the client has usually given up by then); other
  requests, healthz included, are answered meanwhile.  ``server.stalled``
  counts the requests held so far.

Using it in tests
-----------------
``tests/conftest.py`` puts ``tests/`` on ``sys.path`` and re-exports the
``kfp_server`` fixture below, so every test module can take ``kfp_server``
as an argument and ``from kfp_server import KfpServer``.  The fixture points
``HOME`` and ``kfp.Client._LOCAL_KFP_CONTEXT`` at a temporary directory:
patching ``HOME`` alone is not enough, because kfp computes
``Client._LOCAL_KFP_CONTEXT = os.path.expanduser('~/.config/kfp/context.json')``
when ``kfp.client`` is imported.
"""

from __future__ import annotations

import datetime
import email.parser
import email.policy
import http.server
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import urllib.parse
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import yaml

__all__ = ['KfpServer', 'kfp_server']

API = '/apis/v2beta1'
FINAL_STATES = ('SUCCEEDED', 'FAILED', 'CANCELED', 'SKIPPED')
_EPOCH = '1970-01-01T00:00:00Z'
_ANSI = re.compile(r'\x1b\[[0-9;]*m')
_WORKER_FLAG = '--kfp-server-worker'

# google.rpc.Code values used in error bodies.
_GRPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 412: 9, 500: 13,
              501: 12, 503: 14}

# kfp.client.client._FILTER_OPERATIONS (the client sends the integers).
_FILTER_OPS = {1: 'EQUALS', 2: 'NOT_EQUALS', 3: 'GREATER_THAN',
               5: 'GREATER_THAN_EQUALS', 6: 'LESS_THAN',
               7: 'LESS_THAN_EQUALS', 8: 'IN', 9: 'IS_SUBSTRING'}

_TIME_FIELDS = ('created_at', 'finished_at', 'scheduled_at',
                'last_run_created_at')


def _rfc3339(t: Optional[float]) -> str:
    """Formats like the real server: whole seconds, UTC, 'Z'; unset = epoch."""
    if not t:
        return _EPOCH
    return datetime.datetime.fromtimestamp(
        int(t), tz=datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _parse_time(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    if re.fullmatch(r'-?\d+', text):
        return float(text)
    return datetime.datetime.fromisoformat(text.replace('Z',
                                                        '+00:00')).timestamp()


def _msg(**fields: Any) -> Dict[str, Any]:
    """A JSON message without unset fields (protojson omits them too)."""
    return {
        k: v for k, v in fields.items()
        if v is not None and v != '' and v != [] and v != {}
    }


class ApiError(Exception):
    """An error answered as ``{"code", "message", "details"}`` (gRPC style)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Headers(dict):
    """Request headers as sent; lookups are case-insensitive."""

    def _key(self, key: str) -> Optional[str]:
        lower = key.lower()
        for k in self.keys():
            if k.lower() == lower:
                return k
        return None

    def get(self, key, default=None):  # type: ignore[override]
        k = self._key(key)
        return dict.__getitem__(self, k) if k is not None else default

    def __getitem__(self, key):
        k = self._key(key)
        if k is None:
            raise KeyError(key)
        return dict.__getitem__(self, k)

    def __contains__(self, key):  # type: ignore[override]
        return self._key(key) is not None


class _Run:
    """Server-side state of one run (not part of the public API)."""

    def __init__(self, **kw: Any) -> None:
        self.run_id: str = kw['run_id']
        self.experiment_id: str = kw['experiment_id']
        self.display_name: str = kw['display_name']
        self.description: str = kw.get('description') or ''
        self.service_account: str = kw.get('service_account') or ''
        self.pipeline_spec: Optional[dict] = kw.get('pipeline_spec')
        self.version_ref: Optional[dict] = kw.get('version_ref')
        self.parameters: dict = kw.get('parameters') or {}
        self.requested_pipeline_root: Optional[str] = kw.get(
            'requested_pipeline_root')
        self.ir: dict = kw['ir']
        self.pipeline_root: Path = kw['pipeline_root']
        self.meta_dir: Path = kw['meta_dir']
        self.namespace: str = kw.get('namespace') or ''
        self.created_at = time.time()
        self.finished_at: Optional[float] = None
        self.state = 'PENDING'
        self.state_history: List[Tuple[float, str]] = [(self.created_at,
                                                        'PENDING')]
        self.error: Optional[dict] = None
        self.storage_state = 'AVAILABLE'
        self.tasks: Dict[str, dict] = {}
        self.outputs: Optional[dict] = None
        self.cancel_requested = False
        self.proc: Optional[subprocess.Popen] = None
        self.thread: Optional[threading.Thread] = None


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class KfpServer:
    """Loopback KFP v2beta1 API server executing runs with ``kfp.local``.

    Args:
        root: Directory for run outputs (``<root>/<run_id>/``) and bookkeeping
            (``<root>/.kfp_server/``).  Defaults to a new temporary directory.
        host: Interface to bind (loopback by default).
        port: Port to bind; 0 picks a free one.
        require_token: If set, every request (except ``token_exempt_paths``)
            must carry ``Authorization: Bearer <require_token>``, else 401.
        token_exempt_paths: Regexes (``re.search`` on the path) exempt from the
            token check; healthz by default (see module docstring).
        multi_user: Value of ``multi_user`` in the healthz response.
        enable_caching: Passed to ``kfp.local.init`` (cache under the root).
        max_concurrent_runs: How many runs may execute at the same time.
        run_timeout: Seconds after which a running run is killed and FAILED.
        extra_env: Extra environment variables for the worker processes (and
            hence for the components they run).
        python: Interpreter for the worker processes.
    """

    def __init__(
        self,
        root: Optional[os.PathLike] = None,
        *,
        host: str = '127.0.0.1',
        port: int = 0,
        require_token: Optional[str] = None,
        token_exempt_paths: Iterable[str] = (r'^/apis/v2beta1/healthz/?$',),
        multi_user: bool = False,
        enable_caching: bool = False,
        max_concurrent_runs: int = 1,
        run_timeout: float = 600.0,
        extra_env: Optional[Dict[str, str]] = None,
        python: str = sys.executable,
    ) -> None:
        if root is None:
            import tempfile
            root = tempfile.mkdtemp(prefix='kfp-server-')
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.require_token = require_token
        self.token_exempt_paths = list(token_exempt_paths)
        self.multi_user = multi_user
        self.enable_caching = enable_caching
        self.run_timeout = run_timeout
        self.extra_env = dict(extra_env or {})
        self.python = python

        self.requests: List[Tuple[str, str, _Headers]] = []
        self.request_details: List[Dict[str, Any]] = []
        self.pipelines: Dict[str, dict] = {}
        self.versions: Dict[str, dict] = {}  # version id -> version
        self.experiments: Dict[str, dict] = {}
        self.runs: Dict[str, _Run] = {}

        self._lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(max(1, max_concurrent_runs))
        self._failures: List[dict] = []
        self._stalls: List[dict] = []
        self.stalled = 0
        self._stopped = threading.Event()  # wakes stalled requests on stop()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._routes = self._build_routes()

    # ------------------------------------------------------------------ life
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError('KfpServer is not started')
        return f'http://{self.host}:{self.port}'

    def start(self) -> 'KfpServer':
        if self._httpd is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self._stopping = False
        self._stopped.clear()
        self._httpd = _HTTPServer((self.host, self.port), _make_handler(self))
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={'poll_interval': 0.05},
            name=f'kfp-server-{self.port}',
            daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stops serving; runs still executing are killed and CANCELED."""
        if self._httpd is None:
            return
        self._stopping = True
        self._stopped.set()
        with self._lock:
            runs = list(self.runs.values())
            for run in runs:
                if run.state not in FINAL_STATES:
                    self._cancel(run, 'server stopped')
        deadline = time.time() + timeout
        for run in runs:
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.time()))
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = None

    def __enter__(self) -> 'KfpServer':
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ---------------------------------------------------------- test hooks
    def fail_next(self,
                  path_regex: str,
                  status: int = 500,
                  body: Any = None,
                  *,
                  method: Optional[str] = None,
                  times: Optional[int] = 1) -> None:
        """Answers the next ``times`` requests whose path matches ``path_regex``
        (``re.search``; optionally only for ``method``) with ``status``.

        ``body``: dict/list (sent as JSON), str/bytes (sent as is), or None
        (a gRPC-style JSON error).  ``times=None`` means until
        ``clear_failures()``.
        """
        with self._lock:
            self._failures.append(_rule(path_regex, method, times,
                                        status=int(status), body=body))

    def stall_next(self,
                   path_regex: str,
                   seconds: Optional[float] = None,
                   *,
                   method: Optional[str] = None,
                   times: Optional[int] = 1) -> None:
        """Holds the next ``times`` requests whose path matches ``path_regex``
        (``re.search``; optionally only for ``method``) unanswered for
        ``seconds`` (``None``: until the server stops), then handles them as
        usual.  ``times=None`` means until ``clear_failures()``.
        """
        with self._lock:
            self._stalls.append(_rule(path_regex, method, times,
                                      seconds=seconds))

    def clear_failures(self) -> None:
        """Forgets every pending ``fail_next`` and ``stall_next``."""
        with self._lock:
            self._failures.clear()
            self._stalls.clear()

    def run_outputs(self, run_id: str) -> Path:
        """kfp.local's pipeline_root of the run: ``<root>/<run_id>/``."""
        return self.root / run_id

    def pipeline_outputs(self, run_id: str) -> dict:
        """The pipeline's own outputs as returned by kfp.local (parameters as
        values; artifacts as dicts with name/uri/path/metadata/schema_title).
        Empty until the run SUCCEEDED."""
        run = self._get_run_obj(run_id)
        return dict(run.outputs or {})

    def task_outputs(self, run_id: str) -> Dict[str, dict]:
        """Outputs of each finished task, keyed by task name (the key in the
        pipeline DAG, e.g. ``'make-greeting'``)."""
        run = self._get_run_obj(run_id)
        with self._lock:
            return {
                t['task_name']: dict(t.get('outputs') or {})
                for t in run.tasks.values()
                if t.get('outputs') is not None
            }

    def artifact_path(self, run_id: str, task_name: str,
                      output_name: str) -> Path:
        """Local path of an output artifact of a task of the run."""
        outputs = self.task_outputs(run_id).get(task_name)
        if outputs is None:
            raise KeyError(f'task {task_name!r} of run {run_id} has no '
                           f'recorded outputs; tasks: '
                           f'{sorted(self.task_outputs(run_id))}')
        art = outputs[output_name]
        if isinstance(art, list):
            if len(art) != 1:
                raise ValueError(f'{output_name!r} is a list of artifacts')
            art = art[0]
        if not isinstance(art, dict) or 'uri' not in art:
            raise ValueError(f'{output_name!r} is a parameter, not an '
                             f'artifact: {art!r}')
        return Path(art.get('path') or art['uri'])

    def run_log(self, run_id: str) -> str:
        """Combined stdout/stderr of the run's worker (kfp.local logs and the
        components' output)."""
        path = self._get_run_obj(run_id).meta_dir / 'log.txt'
        return path.read_text(errors='replace') if path.exists() else ''

    def get_run(self, run_id: str) -> dict:
        """The run as the API returns it (dict), without going through HTTP."""
        run = self._get_run_obj(run_id)
        with self._lock:
            return self._run_json(run)

    def wait_for_run(self, run_id: str, timeout: float = 60.0) -> dict:
        """Waits until the run is in a final state AND its execution has
        stopped (worker process gone); returns the run dict."""
        run = self._get_run_obj(run_id)
        deadline = time.time() + timeout
        while True:
            thread = run.thread
            if run.state in FINAL_STATES and (thread is None or
                                              not thread.is_alive()):
                return self.get_run(run_id)
            if time.time() > deadline:
                raise TimeoutError(
                    f'run {run_id} still {run.state} after {timeout}s; log:\n'
                    f'{self.run_log(run_id)[-3000:]}')
            time.sleep(0.05)

    # ------------------------------------------------------------- helpers
    def _get_run_obj(self, run_id: str) -> _Run:
        with self._lock:
            if run_id not in self.runs:
                raise KeyError(f'no run {run_id}')
            return self.runs[run_id]

    def _record(self, method: str, path: str, headers: _Headers, query: dict,
                body: bytes) -> dict:
        detail = {
            'method': method,
            'path': path,
            'query': query,
            'headers': headers,
            'body': body,
            'status': None,
        }
        with self._lock:
            self.requests.append((method, path, headers))
            self.request_details.append(detail)
        return detail

    def _take_failure(self, method: str, path: str) -> Optional[dict]:
        return self._take_rule(self._failures, method, path)

    def _stall(self, method: str, path: str) -> None:
        """Blocks the handler of a request ``stall_next`` matches."""
        stall = self._take_rule(self._stalls, method, path)
        if stall is not None:
            with self._lock:
                self.stalled += 1
            self._stopped.wait(stall['seconds'])

    def _take_rule(self, rules: List[dict], method: str,
                   path: str) -> Optional[dict]:
        with self._lock:
            for rule in rules:
                if rule['method'] and rule['method'] != method:
                    continue
                if not rule['regex'].search(path):
                    continue
                if rule['times'] is not None:
                    rule['times'] -= 1
                    if rule['times'] <= 0:
                        rules.remove(rule)
                return rule
        return None

    def _authorized(self, path: str, headers: _Headers) -> bool:
        token = self.require_token
        if not token:
            return True
        if any(re.search(p, path) for p in self.token_exempt_paths):
            return True
        value = (headers.get('Authorization') or '').strip()
        return value == f'Bearer {token}'

    # -------------------------------------------------------------- routes
    def _build_routes(self) -> List[Tuple[str, 're.Pattern', Callable]]:
        seg = r'(?P<{}>[^/:]+)'
        table = [
            ('GET', '/healthz', self._healthz),
            ('POST', '/pipelines/upload', self._upload_pipeline),
            ('POST', '/pipelines/upload_version', self._upload_version),
            ('POST', '/pipelines/create', self._create_pipeline_and_version),
            ('GET', '/pipelines', self._list_pipelines),
            ('POST', '/pipelines', self._create_pipeline),
            ('GET', '/pipelines/names/' + seg.format('name'),
             self._get_pipeline_by_name),
            ('GET', '/pipelines/' + seg.format('pid'), self._get_pipeline),
            ('DELETE', '/pipelines/' + seg.format('pid'),
             self._delete_pipeline),
            ('GET', '/pipelines/' + seg.format('pid') + '/versions',
             self._list_versions),
            ('POST', '/pipelines/' + seg.format('pid') + '/versions',
             self._create_version),
            ('GET', '/pipelines/' + seg.format('pid') + '/versions/' +
             seg.format('vid'), self._get_version),
            ('DELETE', '/pipelines/' + seg.format('pid') + '/versions/' +
             seg.format('vid'), self._delete_version),
            ('POST', '/experiments', self._create_experiment),
            ('GET', '/experiments', self._list_experiments),
            ('GET', '/experiments/' + seg.format('eid'),
             self._get_experiment),
            ('DELETE', '/experiments/' + seg.format('eid'),
             self._delete_experiment),
            ('POST', '/experiments/' + seg.format('eid') + ':archive',
             lambda req, eid: self._set_storage('experiments', eid,
                                                'ARCHIVED')),
            ('POST', '/experiments/' + seg.format('eid') + ':unarchive',
             lambda req, eid: self._set_storage('experiments', eid,
                                                'AVAILABLE')),
            ('POST', '/runs', self._create_run),
            ('GET', '/runs', self._list_runs),
            ('GET', '/runs/' + seg.format('rid'), self._get_run),
            ('DELETE', '/runs/' + seg.format('rid'), self._delete_run),
            ('POST', '/runs/' + seg.format('rid') + ':terminate',
             self._terminate_run),
            ('POST', '/runs/' + seg.format('rid') + ':archive',
             lambda req, rid: self._set_storage('runs', rid, 'ARCHIVED')),
            ('POST', '/runs/' + seg.format('rid') + ':unarchive',
             lambda req, rid: self._set_storage('runs', rid, 'AVAILABLE')),
        ]
        return [(m, re.compile(re.escape(API) + p + '/?'), h)
                for m, p, h in table]

    def _handle(self, method: str, path: str, req: dict) -> Tuple[int, Any]:
        allowed = False
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if not match:
                continue
            allowed = True
            if route_method != method:
                continue
            kwargs = {
                k: urllib.parse.unquote(v)
                for k, v in match.groupdict().items()
            }
            return 200, handler(req, **kwargs)
        if allowed:
            raise ApiError(405, f'Method {method} not allowed for {path}')
        raise ApiError(404, f'kfp_server stand-in: no route for {method} '
                       f'{path}')

    # healthz ---------------------------------------------------------------
    def _healthz(self, req: dict) -> dict:
        return {'commit_sha': 'kfp-server-standin', 'tag_name': 'local',
                'multi_user': self.multi_user}

    # pipelines -------------------------------------------------------------
    def _pipeline_json(self, p: dict) -> dict:
        return _msg(pipeline_id=p['pipeline_id'], name=p['name'],
                    display_name=p['display_name'],
                    description=p['description'],
                    created_at=_rfc3339(p['created_at']),
                    namespace=p['namespace'], tags=p.get('tags'))

    def _version_json(self, v: dict) -> dict:
        return _msg(pipeline_id=v['pipeline_id'],
                    pipeline_version_id=v['pipeline_version_id'],
                    name=v['name'], display_name=v['display_name'],
                    description=v['description'],
                    created_at=_rfc3339(v['created_at']),
                    package_url=({'pipeline_url': v['package_url']}
                                 if v.get('package_url') else None),
                    pipeline_spec=v['pipeline_spec'], tags=v.get('tags'))

    def _find_pipeline(self, pid: str) -> dict:
        if pid not in self.pipelines:
            raise ApiError(404, f'Pipeline {pid} not found')
        return self.pipelines[pid]

    def _new_pipeline(self, name: str, display_name: str, description: str,
                      namespace: str) -> dict:
        if not name:
            raise ApiError(400, 'Pipeline name is required')
        for p in self.pipelines.values():
            if p['name'] == name and p['namespace'] == namespace:
                raise ApiError(
                    409, f'Failed to create a pipeline: pipeline with name '
                    f'{name!r} already exist')
        pipeline = {
            'pipeline_id': str(uuid.uuid4()),
            'name': name,
            'display_name': display_name or name,
            'description': description or '',
            'namespace': namespace or '',
            'created_at': time.time(),
        }
        self.pipelines[pipeline['pipeline_id']] = pipeline
        return pipeline

    def _new_version(self, pipeline: dict, name: str, display_name: str,
                     description: str, spec: Tuple[dict, Optional[dict]],
                     package_url: str = '') -> dict:
        name = name or display_name
        if not name:
            raise ApiError(400, 'Pipeline version name is required')
        for v in self.versions.values():
            if v['pipeline_id'] == pipeline['pipeline_id'] and v['name'] == name:
                raise ApiError(
                    409, f'Failed to create a pipeline version: version with '
                    f'name {name!r} already exist')
        ir, platform = spec
        version = {
            'pipeline_version_id': str(uuid.uuid4()),
            'pipeline_id': pipeline['pipeline_id'],
            'name': name,
            'display_name': display_name or name,
            'description': description or '',
            'created_at': time.time(),
            'package_url': package_url,
            'ir': ir,
            'platform_spec': platform,
            'pipeline_spec': ({'pipeline_spec': ir, 'platform_spec': platform}
                              if platform else ir),
        }
        self.versions[version['pipeline_version_id']] = version
        return version

    def _pipeline_versions(self, pid: str) -> List[dict]:
        return [v for v in self.versions.values() if v['pipeline_id'] == pid]

    def _upload_pipeline(self, req: dict) -> dict:
        q = req['query']
        data, filename = _multipart_file(req, 'uploadfile')
        spec = _parse_package(data, filename)
        name = (q.get('name') or q.get('display_name') or
                Path(filename or 'pipeline').name.split('.')[0])
        with self._lock:
            pipeline = self._new_pipeline(name, q.get('display_name') or '',
                                          q.get('description') or '',
                                          q.get('namespace') or '')
            try:
                self._new_version(pipeline, name, q.get('display_name') or '',
                                  q.get('description') or '', spec)
            except ApiError:
                del self.pipelines[pipeline['pipeline_id']]
                raise
            return self._pipeline_json(pipeline)

    def _upload_version(self, req: dict) -> dict:
        q = req['query']
        data, filename = _multipart_file(req, 'uploadfile')
        spec = _parse_package(data, filename)
        pid = q.get('pipelineid') or q.get('pipeline_id')
        if not pid:
            raise ApiError(400, 'Pipeline id (pipelineid) is required')
        with self._lock:
            pipeline = self._find_pipeline(pid)
            name = q.get('name') or q.get('display_name') or (
                Path(filename or 'version').name.split('.')[0])
            version = self._new_version(pipeline, name,
                                        q.get('display_name') or '',
                                        q.get('description') or '', spec)
            return self._version_json(version)

    def _create_pipeline(self, req: dict) -> dict:
        body = _json_body(req)
        with self._lock:
            p = self._new_pipeline(body.get('name') or body.get('display_name')
                                   or '', body.get('display_name') or '',
                                   body.get('description') or '',
                                   body.get('namespace') or '')
            return self._pipeline_json(p)

    def _spec_from_version_body(self, body: dict) -> Tuple[dict, Optional[dict]]:
        if body.get('pipeline_spec'):
            return _split_spec(body['pipeline_spec'])
        url = (body.get('package_url') or {}).get('pipeline_url') or ''
        if not url:
            raise ApiError(400, 'Pipeline version needs package_url or '
                           'pipeline_spec')
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ('', 'file'):
            raise ApiError(400, f'The stand-in server can only read file:// '
                           f'package urls, got {url!r}')
        path = urllib.parse.unquote(parsed.path)
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ApiError(400, f'Cannot read package url {url!r}: {e}')
        return _parse_package(data, path)

    def _create_version(self, req: dict, pid: str) -> dict:
        body = _json_body(req)
        spec = self._spec_from_version_body(body)
        with self._lock:
            pipeline = self._find_pipeline(pid)
            v = self._new_version(pipeline, body.get('name') or '',
                                  body.get('display_name') or '',
                                  body.get('description') or '', spec,
                                  (body.get('package_url') or
                                   {}).get('pipeline_url') or '')
            return self._version_json(v)

    def _create_pipeline_and_version(self, req: dict) -> dict:
        body = _json_body(req)
        p_body = body.get('pipeline') or {}
        v_body = body.get('pipeline_version') or {}
        spec = self._spec_from_version_body(v_body)
        with self._lock:
            p = self._new_pipeline(p_body.get('name') or
                                   p_body.get('display_name') or '',
                                   p_body.get('display_name') or '',
                                   p_body.get('description') or '',
                                   p_body.get('namespace') or '')
            try:
                self._new_version(p, v_body.get('name') or p['name'],
                                  v_body.get('display_name') or '',
                                  v_body.get('description') or '', spec,
                                  (v_body.get('package_url') or
                                   {}).get('pipeline_url') or '')
            except ApiError:
                del self.pipelines[p['pipeline_id']]
                raise
            return self._pipeline_json(p)

    def _list_pipelines(self, req: dict) -> dict:
        with self._lock:
            items = [
                p for p in self.pipelines.values()
                if _namespace_ok(p, req['query'])
            ]
            page, token, total = _paginate(
                items, req['query'],
                fields={'pipeline_id', 'id', 'name', 'display_name',
                        'description', 'created_at', 'namespace'},
                aliases={'id': 'pipeline_id'})
            return _msg(pipelines=[self._pipeline_json(p) for p in page],
                        total_size=total or None, next_page_token=token)

    def _get_pipeline(self, req: dict, pid: str) -> dict:
        with self._lock:
            return self._pipeline_json(self._find_pipeline(pid))

    def _get_pipeline_by_name(self, req: dict, name: str) -> dict:
        namespace = req['query'].get('namespace') or ''
        with self._lock:
            for p in self.pipelines.values():
                if p['name'] == name and (not namespace or
                                          p['namespace'] == namespace):
                    return self._pipeline_json(p)
        raise ApiError(404, f'Pipeline with name {name!r} not found')

    def _delete_pipeline(self, req: dict, pid: str) -> dict:
        with self._lock:
            self._find_pipeline(pid)
            del self.pipelines[pid]
            for v in self._pipeline_versions(pid):
                del self.versions[v['pipeline_version_id']]
        return {}

    def _list_versions(self, req: dict, pid: str) -> dict:
        with self._lock:
            self._find_pipeline(pid)
            page, token, total = _paginate(
                self._pipeline_versions(pid), req['query'],
                fields={'pipeline_version_id', 'id', 'name', 'display_name',
                        'description', 'created_at'},
                aliases={'id': 'pipeline_version_id'})
            return _msg(pipeline_versions=[self._version_json(v) for v in page],
                        total_size=total or None, next_page_token=token)

    def _find_version(self, pid: str, vid: str) -> dict:
        v = self.versions.get(vid)
        if v is None or v['pipeline_id'] != pid:
            raise ApiError(404, f'Pipeline version {vid} of pipeline {pid} '
                           f'not found')
        return v

    def _get_version(self, req: dict, pid: str, vid: str) -> dict:
        with self._lock:
            return self._version_json(self._find_version(pid, vid))

    def _delete_version(self, req: dict, pid: str, vid: str) -> dict:
        with self._lock:
            self._find_version(pid, vid)
            del self.versions[vid]
        return {}

    # experiments -----------------------------------------------------------
    def _experiment_json(self, e: dict) -> dict:
        return _msg(experiment_id=e['experiment_id'],
                    display_name=e['display_name'],
                    description=e['description'],
                    created_at=_rfc3339(e['created_at']),
                    namespace=e['namespace'],
                    storage_state=e['storage_state'],
                    last_run_created_at=_rfc3339(e['last_run_created_at']))

    def _new_experiment(self, display_name: str, description: str = '',
                        namespace: str = '') -> dict:
        if not display_name:
            raise ApiError(400, 'Experiment must have a non-empty name')
        for e in self.experiments.values():
            if (e['display_name'] == display_name and
                    e['namespace'] == (namespace or '')):
                raise ApiError(
                    409, f'Failed to create a new experiment: experiment '
                    f'with name {display_name!r} already exists')
        e = {
            'experiment_id': str(uuid.uuid4()),
            'display_name': display_name,
            'description': description or '',
            'namespace': namespace or '',
            'created_at': time.time(),
            'storage_state': 'AVAILABLE',
            'last_run_created_at': None,
        }
        self.experiments[e['experiment_id']] = e
        return e

    def _create_experiment(self, req: dict) -> dict:
        body = _json_body(req)
        with self._lock:
            e = self._new_experiment(body.get('display_name') or '',
                                     body.get('description') or '',
                                     body.get('namespace') or '')
            return self._experiment_json(e)

    def _find_experiment(self, eid: str) -> dict:
        if eid not in self.experiments:
            raise ApiError(404, f'Experiment {eid} not found')
        return self.experiments[eid]

    def _list_experiments(self, req: dict) -> dict:
        with self._lock:
            items = [
                e for e in self.experiments.values()
                if _namespace_ok(e, req['query'])
            ]
            page, token, total = _paginate(
                items, req['query'],
                fields={'experiment_id', 'id', 'display_name', 'name',
                        'description', 'created_at', 'namespace',
                        'storage_state', 'last_run_created_at'},
                aliases={'id': 'experiment_id', 'name': 'display_name'})
            return _msg(experiments=[self._experiment_json(e) for e in page],
                        total_size=total or None, next_page_token=token)

    def _get_experiment(self, req: dict, eid: str) -> dict:
        with self._lock:
            return self._experiment_json(self._find_experiment(eid))

    def _delete_experiment(self, req: dict, eid: str) -> dict:
        with self._lock:
            self._find_experiment(eid)
            del self.experiments[eid]
        return {}

    def _set_storage(self, kind: str, ident: str, state: str) -> dict:
        with self._lock:
            if kind == 'experiments':
                self._find_experiment(ident)['storage_state'] = state
            else:
                self._get_run_or_404(ident).storage_state = state
        return {}

    # runs --------------------------------------------------------------------
    def _get_run_or_404(self, rid: str) -> _Run:
        if rid not in self.runs:
            raise ApiError(404, f'Run {rid} not found')
        return self.runs[rid]

    def _task_json(self, run: _Run, t: dict) -> dict:
        return _msg(run_id=run.run_id, task_id=t['task_id'],
                    display_name=t['display_name'],
                    create_time=_rfc3339(t['create_time']),
                    start_time=_rfc3339(t['start_time']),
                    end_time=(_rfc3339(t['end_time'])
                              if t.get('end_time') else None),
                    state=t['state'],
                    error=t.get('error'),
                    state_history=[{'update_time': _rfc3339(ts), 'state': s}
                                   for ts, s in t['state_history']])

    def _run_json(self, run: _Run) -> dict:
        runtime_config = _msg(parameters=run.parameters,
                              pipeline_root=str(run.pipeline_root))
        return _msg(
            experiment_id=run.experiment_id,
            run_id=run.run_id,
            display_name=run.display_name,
            storage_state=run.storage_state,
            description=run.description,
            pipeline_version_id=(run.version_ref or {}).get(
                'pipeline_version_id'),
            pipeline_spec=run.pipeline_spec,
            pipeline_version_reference=run.version_ref,
            runtime_config=runtime_config,
            service_account=run.service_account,
            created_at=_rfc3339(run.created_at),
            scheduled_at=_rfc3339(run.created_at),
            finished_at=_rfc3339(run.finished_at),
            state=run.state,
            error=run.error,
            run_details=_msg(task_details=[
                self._task_json(run, t) for t in run.tasks.values()
            ]),
            state_history=[{'update_time': _rfc3339(ts), 'state': s}
                           for ts, s in run.state_history],
        )

    def _create_run(self, req: dict) -> dict:
        body = _json_body(req)
        display_name = body.get('display_name') or ''
        if not display_name:
            raise ApiError(400, 'Run display_name is required')
        runtime_config = body.get('runtime_config') or {}
        parameters = runtime_config.get('parameters') or {}
        if not isinstance(parameters, dict):
            raise ApiError(400, 'runtime_config.parameters must be an object')
        with self._lock:
            version_ref = None
            spec_obj = body.get('pipeline_spec')
            ref = body.get('pipeline_version_reference') or {}
            if spec_obj:
                ir, _platform = _split_spec(spec_obj)
            elif ref.get('pipeline_id') or ref.get('pipeline_version_id'):
                pid = ref.get('pipeline_id') or ''
                vid = ref.get('pipeline_version_id') or ''
                if vid:
                    version = self.versions.get(vid)
                    if version is None or (pid and
                                           version['pipeline_id'] != pid):
                        raise ApiError(404, f'Pipeline version {vid} not '
                                       f'found')
                else:
                    versions = self._pipeline_versions(
                        self._find_pipeline(pid)['pipeline_id'])
                    if not versions:
                        raise ApiError(404, f'Pipeline {pid} has no versions')
                    version = max(versions, key=lambda v: v['created_at'])
                ir = version['ir']
                version_ref = {
                    'pipeline_id': version['pipeline_id'],
                    'pipeline_version_id': version['pipeline_version_id'],
                }
            else:
                raise ApiError(400, 'Run needs pipeline_spec or '
                               'pipeline_version_reference')
            eid = body.get('experiment_id') or ''
            if eid:
                experiment = self._find_experiment(eid)
            else:
                experiment = next(
                    (e for e in self.experiments.values()
                     if e['display_name'] == 'Default' and
                     not e['namespace']), None) or self._new_experiment(
                         'Default', 'Default experiment')
            run_id = str(uuid.uuid4())
            run = _Run(
                run_id=run_id,
                experiment_id=experiment['experiment_id'],
                display_name=display_name,
                description=body.get('description') or '',
                service_account=body.get('service_account') or
                'pipeline-runner',
                pipeline_spec=spec_obj or None,
                version_ref=version_ref,
                parameters=parameters,
                requested_pipeline_root=runtime_config.get('pipeline_root'),
                ir=ir,
                pipeline_root=self.root / run_id,
                meta_dir=self.root / '.kfp_server' / run_id,
                namespace=experiment['namespace'],
            )
            experiment['last_run_created_at'] = run.created_at
            self.runs[run_id] = run
            run.thread = threading.Thread(target=self._execute,
                                          args=(run,),
                                          name=f'kfp-run-{run_id[:8]}',
                                          daemon=True)
            response = self._run_json(run)
            response.pop('pipeline_spec', None)  # like the real server
            response.pop('run_details', None)
        run.thread.start()
        return response

    def _list_runs(self, req: dict) -> dict:
        q = req['query']
        with self._lock:
            items = [
                r for r in self.runs.values()
                if (not q.get('experiment_id') or
                    r.experiment_id == q['experiment_id']) and
                (not q.get('namespace') or r.namespace == q['namespace'])
            ]
            views = [dict(vars(r), run=r) for r in items]
            page, token, total = _paginate(
                views, q,
                fields={'run_id', 'id', 'display_name', 'name', 'description',
                        'created_at', 'scheduled_at', 'finished_at', 'state',
                        'storage_state', 'experiment_id', 'namespace'},
                aliases={'id': 'run_id', 'name': 'display_name'})
            return _msg(runs=[self._run_json(v['run']) for v in page],
                        total_size=total or None, next_page_token=token)

    def _get_run(self, req: dict, rid: str) -> dict:
        with self._lock:
            return self._run_json(self._get_run_or_404(rid))

    def _delete_run(self, req: dict, rid: str) -> dict:
        with self._lock:
            run = self._get_run_or_404(rid)
            if run.state not in FINAL_STATES:
                self._cancel(run, 'run deleted')
            del self.runs[rid]
        return {}

    def _terminate_run(self, req: dict, rid: str) -> dict:
        with self._lock:
            run = self._get_run_or_404(rid)
            if run.state not in FINAL_STATES:
                self._cancel(run, None)
        return {}

    # ------------------------------------------------------------ execution
    def _set_state(self, run: _Run, state: str,
                   t: Optional[float] = None) -> None:
        t = t or time.time()
        run.state = state
        run.state_history.append((t, state))
        if state in FINAL_STATES:
            run.finished_at = t

    def _cancel(self, run: _Run, reason: Optional[str]) -> None:
        """Marks the run CANCELED now; its executor thread kills the worker."""
        run.cancel_requested = True
        now = time.time()
        self._set_state(run, 'CANCELED', now)
        if reason:
            run.error = {'code': 1, 'message': reason}
        for task in run.tasks.values():
            if task['state'] not in FINAL_STATES:
                _set_task_state(task, 'CANCELED', now)

    def _worker_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env['PYTHONUNBUFFERED'] = '1'
        return env

    def _execute(self, run: _Run) -> None:
        try:
            with self._slots:
                with self._lock:
                    if run.cancel_requested or self._stopping:
                        return
                    self._set_state(run, 'RUNNING')
                self._run_worker(run)
        except Exception as e:  # never leave a run RUNNING on a fixture bug
            with self._lock:
                if run.state not in FINAL_STATES:
                    run.error = {'code': 13, 'message': f'kfp_server: {e!r}'}
                    self._set_state(run, 'FAILED')
            traceback.print_exc()

    def _run_worker(self, run: _Run) -> None:
        meta = run.meta_dir
        meta.mkdir(parents=True, exist_ok=True)
        run.pipeline_root.mkdir(parents=True, exist_ok=True)
        pipeline_file = meta / 'pipeline.yaml'
        pipeline_file.write_text(yaml.safe_dump(run.ir, sort_keys=False))
        job = {
            'pipeline_file': str(pipeline_file),
            'parameters': _coerce_parameters(run.ir, run.parameters),
            'pipeline_root': str(run.pipeline_root),
            'enable_caching': self.enable_caching,
            'cache_root': str(self.root / '.kfp_server' / 'cache'),
            'events': str(meta / 'events.jsonl'),
            'result': str(meta / 'result.json'),
        }
        (meta / 'job.json').write_text(json.dumps(job, indent=2))
        scratch = meta / 'tmp'  # a pod's own /tmp: what kfp.local and the tasks leave there stays in the run
        scratch.mkdir(exist_ok=True)
        with open(meta / 'log.txt', 'wb') as log:
            proc = subprocess.Popen(
                [self.python, os.path.abspath(__file__), _WORKER_FLAG,
                 str(meta)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(meta),
                env=dict(self._worker_env(), TMPDIR=str(scratch)),
                start_new_session=True)
        run.proc = proc
        offset = 0
        deadline = time.time() + self.run_timeout
        term_sent: Optional[float] = None
        timed_out = False
        while proc.poll() is None:
            offset = self._consume_events(run, offset)
            if not timed_out and time.time() > deadline:
                timed_out = True
            if (run.cancel_requested or timed_out) and term_sent is None:
                _killpg(proc, signal.SIGTERM)
                term_sent = time.time()
            elif term_sent is not None and time.time() - term_sent > 3:
                _killpg(proc, signal.SIGKILL)
            time.sleep(0.05)
        if term_sent is not None:
            _killpg(proc, signal.SIGKILL)  # leftovers of the process group
        self._consume_events(run, offset)
        result = None
        result_file = meta / 'result.json'
        if result_file.exists():
            try:
                result = json.loads(result_file.read_text())
            except ValueError:
                result = None
        with self._lock:
            now = time.time()
            if run.state == 'CANCELED':
                final = 'CANCELED'
            elif timed_out:
                final = 'FAILED'
                run.error = {'code': 4, 'message': f'run exceeded '
                             f'run_timeout={self.run_timeout}s'}
            elif result and result.get('status') == 'SUCCEEDED':
                final = 'SUCCEEDED'
                run.outputs = result.get('outputs') or {}
            else:
                final = 'FAILED'
                message = (result or {}).get('error') or (
                    f'pipeline worker exited with code {proc.returncode}; '
                    f'see server.run_log()')
                run.error = {'code': 2, 'message': message}
            for task in run.tasks.values():
                if task['state'] not in FINAL_STATES:
                    _set_task_state(task, 'CANCELED' if final == 'CANCELED'
                                    else 'FAILED', now)
            if run.state not in FINAL_STATES:
                self._set_state(run, final, now)

    def _consume_events(self, run: _Run, offset: int) -> int:
        path = run.meta_dir / 'events.jsonl'
        try:
            with open(path, 'rb') as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b'\n')
        if end < 0:
            return offset
        with self._lock:
            for line in data[:end + 1].splitlines():
                if line.strip():
                    self._apply_event(run, json.loads(line))
        return offset + end + 1

    def _apply_event(self, run: _Run, ev: dict) -> None:
        kind, t = ev.get('event'), ev.get('time') or time.time()
        if kind == 'task_start':
            state = 'CANCELED' if run.cancel_requested else 'RUNNING'
            run.tasks[ev['id']] = {
                'task_id': str(uuid.uuid4()),
                'task_name': ev['task'],
                'display_name': ev.get('display_name') or ev['task'],
                'component': ev.get('component'),
                'create_time': t,
                'start_time': t,
                'end_time': None,
                'state': state,
                'state_history': [(t, state)],
                'outputs': None,
            }
        elif kind == 'task_end':
            task = run.tasks.get(ev['id'])
            if task is None:
                return
            task['outputs'] = ev.get('outputs')
            if task['state'] in FINAL_STATES:  # canceled meanwhile
                task['end_time'] = task['end_time'] or t
                return
            state = 'SUCCEEDED' if ev.get('status') == 'SUCCESS' else 'FAILED'
            _set_task_state(task, state, t)
            if state == 'FAILED':
                task['error'] = {
                    'code': 2,
                    'message': ev.get('error') or
                               f'task {task["task_name"]} failed; see '
                               f'server.run_log()'
                }


def _rule(path_regex: str, method: Optional[str], times: Optional[int],
          **what: Any) -> dict:
    """A one-shot (or ``times``-shot) rule for requests matching a path."""
    return dict(regex=re.compile(path_regex),
                method=method.upper() if method else None, times=times,
                **what)


def _set_task_state(task: dict, state: str, t: float) -> None:
    task['state'] = state
    task['state_history'].append((t, state))
    if state in FINAL_STATES:
        task['end_time'] = t


def _coerce_parameters(ir: dict, parameters: dict) -> dict:
    """Run parameters typed like the pipeline's inputs.

    On the wire every number is a protobuf ``Value`` (a double), and the real
    backend converts it to the declared input type.  kfp.local is stricter:
    ``YamlComponent(**kwargs)`` rejects e.g. ``2`` for a ``float`` input
    (``InconsistentTypeException: ... 'NUMBER_INTEGER' is incompatible with
    the input type 'NUMBER_DOUBLE'``), so mirror the backend's conversion.
    """
    specs = (((ir.get('root') or {}).get('inputDefinitions') or
              {}).get('parameters') or {})
    coerced = dict(parameters)
    for name, value in parameters.items():
        kind = (specs.get(name) or {}).get('parameterType')
        if isinstance(value, bool):
            continue
        if kind == 'NUMBER_DOUBLE' and isinstance(value, int):
            coerced[name] = float(value)
        elif (kind == 'NUMBER_INTEGER' and isinstance(value, float) and
              value.is_integer()):
            coerced[name] = int(value)
    return coerced


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ------------------------------------------------------------ request parsing
def _json_body(req: dict) -> dict:
    if not req['body']:
        return {}
    try:
        body = json.loads(req['body'])
    except ValueError as e:
        raise ApiError(400, f'Invalid JSON body: {e}')
    if not isinstance(body, dict):
        raise ApiError(400, 'JSON body must be an object')
    return body


def _multipart_file(req: dict, field: str) -> Tuple[bytes, str]:
    ctype = req['headers'].get('Content-Type') or ''
    if not ctype.startswith('multipart/form-data'):
        raise ApiError(400, f'Expected multipart/form-data, got {ctype!r}')
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b'Content-Type: ' + ctype.encode() + b'\r\n\r\n' + req['body'])
    for part in msg.iter_parts():
        if part.get_param('name', header='content-disposition') == field:
            return part.get_payload(decode=True) or b'', part.get_filename(
            ) or ''
    raise ApiError(400, f'Missing multipart field {field!r}')


def _split_spec(obj: Any) -> Tuple[dict, Optional[dict]]:
    """(pipeline IR, platform spec) from a run/version ``pipeline_spec``: the IR
    itself, or ``{'pipeline_spec': IR, 'platform_spec': ...}`` as kfp.Client
    sends when the package has a platform spec document."""
    if not isinstance(obj, dict):
        raise ApiError(400, 'pipeline_spec must be an object')
    platform = None
    if 'pipeline_spec' in obj and 'root' not in obj:
        platform = obj.get('platform_spec') or None
        obj = obj['pipeline_spec']
    _validate_ir(obj)
    return obj, platform


def _validate_ir(ir: Any) -> None:
    if not isinstance(ir, dict) or 'root' not in ir:
        raise ApiError(400, 'Invalid pipeline spec: not a compiled KFP v2 '
                       'PipelineSpec (no "root")')
    try:
        from google.protobuf import json_format
        from kfp.pipeline_spec import pipeline_spec_pb2
        json_format.ParseDict(ir, pipeline_spec_pb2.PipelineSpec())
    except ImportError:  # pragma: no cover - kfp is a test dependency
        return
    except Exception as e:
        raise ApiError(400, f'Invalid pipeline spec: {e}')


def _parse_package(data: bytes, filename: str) -> Tuple[dict, Optional[dict]]:
    """Reads a pipeline package (.yaml/.json, .tar.gz/.tgz or .zip)."""
    try:
        if data[:2] == b'\x1f\x8b':
            with tarfile.open(fileobj=io.BytesIO(data), mode='r:gz') as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                text = tar.extractfile(members[_choose_yaml(list(
                    members))]).read().decode()
        elif data[:4] == b'PK\x03\x04':
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                text = zf.read(_choose_yaml(zf.namelist())).decode()
        else:
            text = data.decode('utf-8')
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except ApiError:
        raise
    except Exception as e:
        raise ApiError(400, f'Failed to read pipeline package '
                       f'{filename!r}: {e}')
    if not docs or not isinstance(docs[0], dict):
        raise ApiError(400, f'Pipeline package {filename!r} is empty')
    first, platform = docs[0], {}
    for doc in docs[1:]:
        if isinstance(doc, dict):
            platform.update(doc)
    ir, wrapped_platform = _split_spec(first)
    return ir, (platform or wrapped_platform or None)


def _choose_yaml(names: List[str]) -> str:
    files = [n for n in names if n.endswith(('.yaml', '.yml', '.json'))]
    base = [n for n in files if os.path.basename(n) == 'pipeline.yaml']
    if base:
        return base[0]
    if len(files) == 1:
        return files[0]
    raise ApiError(400, f'Invalid package: expected one pipeline yaml, got '
                   f'{files}')


def _namespace_ok(item: dict, query: dict) -> bool:
    namespace = query.get('namespace') or ''
    return not namespace or item.get('namespace', '') == namespace


def _predicate_value(pred: dict) -> Any:
    for key in ('string_value', 'stringValue', 'int_value', 'intValue',
                'long_value', 'longValue', 'timestamp_value',
                'timestampValue'):
        if key in pred:
            return pred[key]
    for key in ('string_values', 'stringValues', 'int_values', 'intValues',
                'long_values', 'longValues'):
        if key in pred:
            return list((pred[key] or {}).get('values') or [])
    return None


def _comparable(key: str, value: Any) -> Any:
    if key in _TIME_FIELDS:
        return _parse_time(value) if value not in (None, '') else 0.0
    return value


def _matches(item: dict, predicates: List[dict], fields: set,
             aliases: dict) -> bool:
    for pred in predicates:
        key = aliases.get(pred.get('key'), pred.get('key'))
        if pred.get('key') not in fields:
            raise ApiError(400, f'Invalid filter: unsupported key '
                           f'{pred.get("key")!r}')
        op = pred.get('operation')
        if isinstance(op, str) and op.isdigit():
            op = int(op)
        op = _FILTER_OPS.get(op, op)
        want = _predicate_value(pred)
        have = item.get(key)
        if key in _TIME_FIELDS:
            have = _comparable(key, have)
            want = ([_comparable(key, w) for w in want] if isinstance(
                want, list) else _comparable(key, want))
        elif isinstance(have, (int, float)) and isinstance(want, str):
            try:
                want = float(want)
            except ValueError:
                pass
        try:
            ok = {
                'EQUALS': lambda: have == want,
                'NOT_EQUALS': lambda: have != want,
                'GREATER_THAN': lambda: have > want,
                'GREATER_THAN_EQUALS': lambda: have >= want,
                'LESS_THAN': lambda: have < want,
                'LESS_THAN_EQUALS': lambda: have <= want,
                'IN': lambda: have in (want or []),
                'IS_SUBSTRING': lambda: str(want) in str(have or ''),
            }[op]()
        except KeyError:
            raise ApiError(400, f'Invalid filter: unsupported operation '
                           f'{pred.get("operation")!r}')
        except TypeError:
            ok = False
        if not ok:
            return False
    return True


def _paginate(items: List[dict], query: dict, fields: set,
              aliases: dict) -> Tuple[List[dict], Optional[str], int]:
    """Applies ``filter``, ``sort_by``, ``page_size`` and ``page_token``."""
    raw_filter = query.get('filter')
    if raw_filter:
        try:
            parsed = json.loads(raw_filter)
        except ValueError as e:
            raise ApiError(400, f'Invalid filter: {e}')
        predicates = parsed.get('predicates') or []
        items = [i for i in items if _matches(i, predicates, fields, aliases)]
    sort_by = (query.get('sort_by') or '').strip()
    if sort_by:
        parts = sort_by.split()
        key = aliases.get(parts[0], parts[0])
        if parts[0] not in fields:
            raise ApiError(400, f'Invalid sorting field {parts[0]!r}')
        desc = len(parts) > 1 and parts[1].lower() == 'desc'
        present = [i for i in items if i.get(key) is not None]
        missing = [i for i in items if i.get(key) is None]
        try:
            present.sort(key=lambda i: _comparable(key, i.get(key)),
                         reverse=desc)
        except TypeError:
            present.sort(key=lambda i: str(i.get(key)), reverse=desc)
        items = present + missing
    total = len(items)
    try:
        start = int(query.get('page_token') or 0)
        size = int(query.get('page_size') or 0) or 20
    except ValueError:
        raise ApiError(400, 'Invalid page_token or page_size')
    page = items[start:start + size]
    token = str(start + size) if start + size < total else None
    return page, token, total


def _make_handler(server: KfpServer) -> type:

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = 'kfp-server-standin/1.0'

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; see server.requests

        def _send(self, status: int, payload: Any,
                  extra_headers: Optional[dict] = None) -> None:
            if isinstance(payload, (bytes, bytearray)):
                data, ctype = bytes(payload), 'application/octet-stream'
            elif isinstance(payload, str):
                data, ctype = payload.encode(), 'text/plain; charset=utf-8'
            else:
                data, ctype = json.dumps(payload).encode(), 'application/json'
            try:
                self.send_response(status)
                self.send_header('Content-Type', ctype)
                self.send_header('Content-Length', str(len(data)))
                for k, v in (extra_headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped waiting (a stalled request)

        def _error(self, status: int, message: str) -> dict:
            return {
                'error': message,
                'code': _GRPC_CODE.get(status, 2),
                'message': message,
                'details': [],
            }

        def _dispatch(self) -> None:
            method = self.command
            parts = urllib.parse.urlsplit(self.path)
            path = parts.path
            query = {
                k: v[-1] for k, v in urllib.parse.parse_qs(
                    parts.query, keep_blank_values=True).items()
            }
            length = int(self.headers.get('Content-Length') or 0)
            body = self.rfile.read(length) if length > 0 else b''
            headers = _Headers(self.headers.items())
            req = server._record(method, path, headers, query, body)
            server._stall(method, path)
            failure = server._take_failure(method, path)
            if failure is not None:
                payload = failure['body']
                if payload is None:
                    payload = self._error(
                        failure['status'],
                        f'injected failure {failure["status"]} for {path}')
                req['status'] = failure['status']
                self._send(failure['status'], payload)
                return
            if not server._authorized(path, headers):
                req['status'] = 401
                self._send(401,
                           self._error(401, 'Unauthenticated: missing or '
                                       'invalid bearer token'),
                           {'WWW-Authenticate': 'Bearer'})
                return
            try:
                status, payload = server._handle(method, path, req)
            except ApiError as e:
                status, payload = e.status, self._error(e.status, e.message)
            except Exception as e:  # a bug in the stand-in: say so loudly
                traceback.print_exc()
                status, payload = 500, self._error(
                    500, f'kfp_server internal error: {e!r}')
            req['status'] = status
            self._send(status, payload)

        do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _dispatch

    return Handler


# ------------------------------------------------------------------ worker
def _jsonable(value: Any) -> Any:
    """JSON view of kfp.local outputs (artifacts become dicts)."""
    from kfp import dsl
    if isinstance(value, dsl.Artifact):
        try:
            path = value.path
        except Exception:
            path = None
        return {
            'name': value.name,
            'uri': value.uri,
            'path': path,
            'metadata': _jsonable(dict(value.metadata or {})),
            'schema_title': getattr(value, 'schema_title', None),
        }
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _install_task_hooks(emit: Callable[..., None]) -> str:
    """Wraps kfp.local's per-task entry point so task start/end is reported."""
    counter = itertools.count(1)
    try:
        from kfp.local.orchestrator import task_executor
    except ImportError:
        task_executor = None
    if task_executor is not None and hasattr(task_executor,
                                             'execute_single_task'):
        original = task_executor.execute_single_task

        def execute_single_task(*args: Any, **kwargs: Any):
            task_name = kwargs.get('task_name', args[0] if args else '?')
            task_spec = kwargs.get('task_spec',
                                   args[1] if len(args) > 1 else None)
            display = getattr(getattr(task_spec, 'task_info', None), 'name',
                              '') or task_name
            component = getattr(getattr(task_spec, 'component_ref', None),
                                'name', '')
            return _observed(emit, next(counter), task_name, display,
                             component, kwargs.get('pipeline_resource_name'),
                             lambda: original(*args, **kwargs))

        task_executor.execute_single_task = execute_single_task
        return 'kfp.local.orchestrator.task_executor.execute_single_task'

    from kfp.local import task_dispatcher  # older kfp
    original_impl = task_dispatcher.run_single_task_implementation

    def run_single_task_implementation(*args: Any, **kwargs: Any):
        component = kwargs.get('component_name', '')
        name = component[len('comp-'):] if component.startswith(
            'comp-') else component
        return _observed(emit, next(counter), name, name, component,
                         kwargs.get('pipeline_resource_name'),
                         lambda: original_impl(*args, **kwargs))

    task_dispatcher.run_single_task_implementation = (
        run_single_task_implementation)
    return 'kfp.local.task_dispatcher.run_single_task_implementation'


def _observed(emit: Callable[..., None], ident: int, task_name: str,
              display_name: str, component: str,
              pipeline_resource_name: Optional[str], call: Callable[[], Any]):
    emit('task_start', id=str(ident), task=task_name,
         display_name=display_name, component=component,
         pipeline_resource_name=pipeline_resource_name)
    try:
        outputs, status = call()
    except BaseException as e:
        emit('task_end', id=str(ident), status='FAILURE',
             error=_ANSI.sub('', f'{type(e).__name__}: {e}'))
        raise
    emit('task_end', id=str(ident), status=getattr(status, 'name',
                                                   str(status)),
         outputs=_jsonable(outputs) if outputs is not None else {})
    return outputs, status


def _worker_main(meta_dir: str) -> int:
    job = json.loads((Path(meta_dir) / 'job.json').read_text())
    events = open(job['events'], 'a', encoding='utf-8')
    lock = threading.Lock()

    def emit(kind: str, **fields: Any) -> None:
        fields.update(event=kind, time=time.time())
        line = json.dumps(fields, default=repr)
        with lock:
            events.write(line + '\n')
            events.flush()

    def write_result(result: dict) -> None:
        tmp = job['result'] + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(result, f, default=repr)
        os.replace(tmp, job['result'])

    import inspect

    import kfp.local
    from kfp import components

    hook = _install_task_hooks(emit)
    emit('worker_start', hook=hook, pid=os.getpid())
    init_kwargs: Dict[str, Any] = dict(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=job['pipeline_root'],
        raise_on_error=True,
    )
    accepted = inspect.signature(kfp.local.init).parameters
    if 'enable_caching' in accepted:
        init_kwargs['enable_caching'] = job['enable_caching']
        init_kwargs['cache_root'] = job['cache_root']
    try:
        kfp.local.init(**init_kwargs)
        pipeline = components.load_component_from_file(job['pipeline_file'])
        task = pipeline(**job['parameters'])
        outputs = _jsonable(dict(task.outputs or {}))
    except BaseException as e:
        traceback.print_exc()
        write_result({
            'status': 'FAILED',
            'error': _ANSI.sub('', f'{type(e).__name__}: {e}'),
        })
        return 1
    write_result({'status': 'SUCCEEDED', 'outputs': outputs})
    return 0


# ------------------------------------------------------------ pytest fixture
if __name__ != '__main__':
    try:
        import pytest
    except ImportError:  # pragma: no cover
        pytest = None

    if pytest is not None:

        @pytest.fixture
        def kfp_server(tmp_path, monkeypatch):
            """A started ``KfpServer`` rooted in ``tmp_path / 'kfp'``, with
            ``HOME`` and ``kfp.Client``'s context file under ``tmp_path``."""
            home = tmp_path / 'home'
            home.mkdir(exist_ok=True)
            monkeypatch.setenv('HOME', str(home))
            for name in ('KF_PIPELINES_ENDPOINT',
                         'KF_PIPELINES_DEFAULT_EXPERIMENT_NAME',
                         'KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME'):
                monkeypatch.delenv(name, raising=False)
            try:
                from kfp.client import client as kfp_client_module
                monkeypatch.setattr(
                    kfp_client_module.Client, '_LOCAL_KFP_CONTEXT',
                    str(home / '.config' / 'kfp' / 'context.json'))
            except ImportError:  # pragma: no cover
                pass
            with KfpServer(root=tmp_path / 'kfp') as server:
                yield server


if __name__ == '__main__' and len(sys.argv) == 3 and sys.argv[1] == _WORKER_FLAG:
    sys.exit(_worker_main(sys.argv[2]))
