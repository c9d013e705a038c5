"""The demo notebook as a person sees it: JupyterLab served on 127.0.0.1, driven by headless
Chromium (Debian's `chromium`, through Playwright's Python API; Playwright's own browser download
is not used). Runs every cell of a copy of notebooks/demo_wine.ipynb, takes a screenshot of the
live run display mid-run and of the final state, and reads from the page's DOM that the DAG, the
step states and the metrics rendered. Screenshots stay in the test's tmp folder (printed)."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium here (.ci/run installs Debian's chromium package)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python API is not installed (pip install playwright)")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install jupyterlab)")

# What Chromium needs on a machine without network or a display (see the machine notes).
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = os.path.join(tempfile.gettempdir(), "kfmagic-screenshots")
KERNEL_READY = """() => {
    const kernel = window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel;
    return kernel?.connectionStatus === 'connected' && kernel.status === 'idle';
}"""
STEPS = ["load", "prepare", "train_svm", "train_forest", "train_logreg", "compare"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving tmp_path: (base URL, token). No network is asked
    for: news, update checks and the extension manager's PyPI look-ups are off."""
    config = tmp_path / "jupyter-config"
    settings = config / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "LabApp": {
            "expose_app_in_browser": True, "news_url": None, "extension_manager": "readonly",
            "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        },
    }))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.port_retries=0", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield base, token
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            browser.close()


def test_the_demo_notebook_run_in_jupyterlab_shows_its_dag_states_and_metrics_live(lab, page, tmp_path):
    base, token = lab
    os.makedirs(SCREENSHOTS, exist_ok=True)
    shutil.copy(os.path.join(REPO, "notebooks", "demo_wine.ipynb"), tmp_path / "demo_wine.ipynb")
    page.goto(f"{base}/lab/tree/demo_wine.ipynb?token={token}")
    page.wait_for_function(KERNEL_READY, timeout=60000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")  # not awaited

    # Mid-run: the view first sent (every step pending) has been patched in place, by id.
    page.wait_for_function(
        "document.querySelector(\".kfm[id$='-view'] svg.kfm-dag g.kfm-running, .kfm[id$='-view'] svg.kfm-dag g.kfm-done\")",
        polling=50, timeout=90000,
    )
    view = page.query_selector(".kfm[id$='-view']")
    mid_run = view.eval_on_selector_all("svg.kfm-dag g[data-step]", "gs => gs.map(g => g.getAttribute('class'))")
    view.scroll_into_view_if_needed()
    view.screenshot(path=os.path.join(SCREENSHOTS, "live_mid_run.png"))
    page.screenshot(path=os.path.join(SCREENSHOTS, "page_mid_run.png"))
    assert {"kfm-running", "kfm-done"} & set(mid_run) and {"kfm-pending", "kfm-running"} & set(mid_run), mid_run

    # The final state replaces the live view whole: no ids, no script; then the last cell runs.
    page.wait_for_function(
        "[...document.querySelectorAll('.kfm progress')].some(p => p.value == 6 && !p.id)", timeout=120000
    )
    page.wait_for_function(KERNEL_READY, timeout=60000)
    final = page.wait_for_selector(".kfm:has(progress:not([id]))")
    final.scroll_into_view_if_needed()
    final.query_selector("tbody tr:first-child summary").click()  # a step's output is collapsed until asked for
    assert "178 wines, 3 cultivars" in final.query_selector("tbody tr:first-child details pre").inner_text()
    final.screenshot(path=os.path.join(SCREENSHOTS, "live_final.png"))
    page.screenshot(path=os.path.join(SCREENSHOTS, "page_final.png"), full_page=True)
    print(f"screenshots in {SCREENSHOTS}")

    boxes = final.eval_on_selector_all(
        "svg.kfm-dag g[data-step]", "gs => gs.map(g => [g.dataset.step, g.getAttribute('class')])"
    )
    assert sorted(boxes) == sorted([name, "kfm-done"] for name in STEPS)
    edges = final.eval_on_selector_all("svg.kfm-dag [data-from]", "es => es.map(e => e.dataset.from + '>' + e.dataset.to)")
    assert sorted(edges) == sorted(
        ["load>prepare", "prepare>train_svm", "prepare>train_forest", "prepare>train_logreg",
         "train_svm>compare", "train_forest>compare", "train_logreg>compare"]
    )
    rows = final.eval_on_selector_all("tbody tr", "rs => rs.map(r => [...r.cells].slice(0, 4).map(c => c.innerText))")
    assert [row[:2] for row in rows] == [[name, "done"] for name in STEPS]
    metrics = {row[0]: row[3] for row in rows}
    for step, metric in [("train_svm", "svm_accuracy"), ("train_forest", "forest_accuracy"),
                         ("train_logreg", "logreg_accuracy"), ("compare", "best_accuracy")]:
        name, value = metrics[step].split("=")
        assert name == metric and 0 < float(value) <= 1
    assert page.evaluate("[...document.querySelectorAll('.jp-OutputArea-output script')].length") == 0
    show = page.query_selector_all(".kfm:not(:has(progress)) svg.kfm-dag g[data-step]")
    assert len(show) == len(STEPS)  # %pipeline show's DAG, drawn inline
