"""The notebooks as a new user meets them: JupyterLab in a real browser (Debian's Chromium, headless,
driven by Playwright), notebooks opened from the file browser and run with Run > Run All Cells, twice
in the same kernel; the study's REPORT.html opened alone. Each test's last screen is kept under
test-artifacts/browser/."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from idd_lib.notebook import KERNEL_DISPLAY_NAME
from study_outputs import study_outputs

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("IDD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# a quiet, throw-away browser: no sandbox (CI runs as root), no background traffic to the internet
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


def _require_browser():
    """Skipped on a developer machine without Chromium; in CI (``CI`` set) a missing browser fails."""
    missing = None if Path(CHROMIUM).is_file() else f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (make install)"
    if missing and os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {missing}")
    if missing:
        pytest.skip(missing)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(quick_study, shared_results, tmp_path_factory):
    """JupyterLab on a copy of notebooks/ on a free loopback port, seeing the quick study's results (its
    teacher and runs are cached, so 02 runs in seconds); stopped by its PID."""
    _require_browser()
    home = tmp_path_factory.mktemp("lab")
    # a copy: Lab saves the notebooks it runs, and the committed ones stay without outputs
    notebooks = shutil.copytree(ROOT / "notebooks", home / "notebooks")
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "IDD_RESULTS": str(shared_results), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    log = (home / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--LabApp.news_url=None",
         "--LabApp.extension_manager=readonly", "--KernelManager.transport_encryption=auto",
         f"--ServerApp.root_dir={notebooks}", *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(home / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield f"{url}/lab?token={token}", home / "lab.log"
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, lab, request):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(lab[0])
    yield page
    # what each test left on screen, kept also when it passed (a failed one's shows why)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    page.close()


def _open_from_file_browser(page, name: str):
    page.locator(".jp-DirListing-item", has_text=name).dblclick()
    notebook = page.locator(".jp-NotebookPanel:visible")
    notebook.locator(".jp-Notebook-cell").first.wait_for()
    return notebook


def _execution_counts(notebook) -> list[int | None]:
    """Each code cell's ``[n]`` (None while queued ``[*]`` or never run ``[ ]``)."""
    texts = notebook.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()  # also cells scrolled out of view
    return [int(m.group(1)) if (m := re.search(r"\[(\d+)\]", t)) else None for t in texts]


def _error_outputs(notebook):
    """Cells' error outputs: Lab renders an error as stderr text (its traceback, or the project's one line)."""
    return notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                            has_text=re.compile(r"Traceback|%tb shows the traceback"))


def _assert_no_errors(notebook) -> None:
    errors = _error_outputs(notebook)
    assert errors.count() == 0, errors.all_text_contents()


def _run_all(page, notebook) -> None:
    """Run > Run All Cells; returns when every cell ran again (or one failed) and the kernel is idle."""
    from playwright.sync_api import expect

    idle = notebook.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    expect(idle).to_have_count(1, timeout=120_000)  # a menu click before the kernel is ready does nothing
    notebook.locator(".jp-Notebook-cell").first.click()  # the notebook, not the file browser, has focus
    before = max(filter(None, _execution_counts(notebook)), default=0)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        counts = _execution_counts(notebook)
        failed = _error_outputs(notebook).count() > 0
        if idle.count() and (failed or counts and all(c is not None and c > before for c in counts)):
            return
        time.sleep(1)
    raise AssertionError(f"Run All did not finish in {RUN_TIMEOUT_S} s; execution counts {_execution_counts(notebook)}")


@pytest.mark.parametrize("name", ["00_synthetic_data.ipynb", "02_distill.ipynb"])
def test_notebook_runs_all_twice_in_the_browser_on_the_project_kernel(page, lab, name):
    from playwright.sync_api import expect

    notebook = _open_from_file_browser(page, name)
    kernel = page.locator(".jp-NotebookPanel:visible .jp-KernelName")
    expect(kernel).to_have_text(KERNEL_DISPLAY_NAME)  # the notebook's kernel, not "Python 3 (ipykernel)"
    for _ in range(2):  # a second Run All in the same kernel
        _run_all(page, notebook)
    _assert_no_errors(notebook)
    assert notebook.locator(".jp-OutputArea-output img").count() >= 1
    expect(kernel).to_have_text(KERNEL_DISPLAY_NAME)
    assert "without encryption" not in lab[1].read_text()  # Lab's kernels get CurveZMQ keys


def test_methods_edited_in_lab_explore_and_the_next_make_study_reports_what_it_did(page, lab, quick_study):
    """04 with other methods, typed into its parameters cell in Lab: its figures go to explore/, and
    ``make study`` afterwards leaves REPORT.md, its tables and figures as they were."""
    before = study_outputs(quick_study)
    notebook = _open_from_file_browser(page, "04_interclass_distance.ipynb")
    parameters = notebook.locator(".jp-CodeCell", has_text="methods: str").locator(".cm-content")
    parameters.click()
    page.keyboard.press("Control+End")
    page.keyboard.insert_text('\nmethods = "baseline,idd"  # edited in Lab')
    _run_all(page, notebook)
    _assert_no_errors(notebook)
    explored = list(quick_study.glob("explore/04_interclass_distance-*/figures/distance_heatmaps.png"))
    assert len(explored) == 1 and study_outputs(quick_study) == before
    # the grids' settings the quick study ran with (inline), so its notebooks stay complete for the tests after
    done = subprocess.run(["make", "study", "PROFILE=quick", "EXECUTOR=", "WORKERS="], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "IDD_RESULTS": str(quick_study.parent)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "04_interclass_distance: complete, skipped" in done.stdout
    assert study_outputs(quick_study) == before


def test_report_html_opens_alone_with_its_contents_figures_and_pdfs(page, quick_study, tmp_path):
    """REPORT.html copied on its own (sent by mail): every figure decodes, every link is inside the page."""
    alone = tmp_path / "REPORT.html"
    shutil.copy(quick_study / "REPORT.html", alone)
    page.goto(alone.as_uri())
    assert page.locator("nav.contents a").count() >= 3 and page.locator("table").count() >= 2
    images = page.locator("img")
    assert images.count() >= 3
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    links = page.evaluate("Array.from(document.querySelectorAll('a[href]'), a => a.getAttribute('href'))")
    assert links and all(link.startswith(("#", "data:", "http")) for link in links), links
