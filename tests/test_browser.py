"""`make lab` in a real browser: the JupyterLab server `make lab` starts, a notebook opened in headless
Chromium, its first cells run from the keyboard, and what the page then shows.

Marked ``browser``: runs only under ``pytest -m browser`` (or ``S2DM_BROWSER_TESTS=1``; tests/conftest.py),
skipped where no Chromium is installed (Debian: ``apt-get install chromium``; ``S2DM_CHROMIUM`` names another
binary) or JupyterLab is not in this environment (``make .venv/.stamp-lab``). Chromium is driven over the
Chrome DevTools Protocol with websocket-client (a dependency of jupyter_server). Server and browser listen on
127.0.0.1 only, every wait has a deadline, and both are torn down whatever happens.
``S2DM_LAB_SCREENSHOT=docs/lab.png`` keeps the screenshot (docs/notebooks.md shows it); it is always written
to the test's tmp_path.
"""
import base64
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_noise_schedule.ipynb"
pytestmark = pytest.mark.browser


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_commands():
    """The two commands `make lab` runs (kernel registration, server) for this Python's environment."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-n", "-o", f"{venv}/.stamp-lab", "lab",
                        f"PY={sys.executable}", f"VENV={venv}"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    register = next(ln for ln in r.stdout.splitlines() if "ipykernel install" in ln)
    server = next(ln for ln in r.stdout.splitlines() if " lab " in ln)
    kernel = register.split("--name ")[1].split()[0]
    display = shlex.split(register.split("--display-name ")[1])[0]
    return register, server, kernel, display


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait(what, check, timeout, interval=0.5, shows=None):
    """check() until it returns a true value (returned), else AssertionError after timeout seconds (saying what
    shows() returns then, when given)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as e:  # noqa: BLE001  (not up yet: retried until the deadline)
            value, last = None, e
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last!r})" if last else "")
                         + (f"; the page shows {shows()}" if shows else ""))


class DevTools:
    """The smallest Chrome DevTools Protocol client: one page target, calls answered in order."""

    def __init__(self, ws_url, timeout=30):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.ids = 0

    def call(self, method, timeout=30, **params):
        import websocket

        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method} in {timeout} s")
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                raise TimeoutError(f"no answer to {method} in {timeout} s") from None
            if msg.get("id") == self.ids:  # anything else is an event: none are enabled, so skip it
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression, timeout=30):
        r = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('text')} "
                               f"{r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r["result"].get("value")

    def key(self, key, code, keycode, modifiers=0):
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=keycode,
                      nativeVirtualKeyCode=keycode, modifiers=modifiers)

    def click(self, x, y):
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path):
        Path(path).write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        self.ws.close()


def stop(proc, grace=10):
    """End a process started in its own session, and the group it leads (SIGTERM, then SIGKILL)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)
    except ProcessLookupError:
        pass


# The page, read by DevTools: cells of the open notebook, their input prompts and text outputs.
CELLS_JS = """(() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return null;
  return Array.from(nb.querySelectorAll(':scope .jp-Cell')).map(c => ({
    kind: c.classList.contains('jp-CodeCell') ? 'code' : 'other',
    prompt: (c.querySelector('.jp-InputPrompt') || {}).textContent || '',
    outputs: Array.from(c.querySelectorAll('.jp-OutputArea-output')).map(o => ({
      text: o.textContent, mime: o.getAttribute('data-mime-type') || ''}))}));
})()"""
KERNEL_JS = """(() => {
  const name = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar-kernelName');
  const dialog = document.querySelector('.jp-Dialog');
  return {name: name ? name.textContent.trim() : null, dialog: dialog ? dialog.textContent.trim() : null};
})()"""
SCROLL_TOP_JS = """document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
  .forEach(e => { e.scrollTop = 0; })"""
FIRST_CELL_BOX_JS = """(() => {
  const c = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell');
  const r = c.getBoundingClientRect();
  return [r.left + r.width / 2, r.top + Math.min(r.height / 2, 20)];
})()"""


@pytest.fixture
def chromium():
    chrome = os.environ.get("S2DM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chrome:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; or set S2DM_CHROMIUM)")
    pytest.importorskip("websocket", reason="websocket-client (comes with jupyter_server) drives Chromium")
    return chrome


@pytest.fixture
def lab_env():
    pytest.importorskip("jupyterlab", reason="JupyterLab is not in this environment (make .venv/.stamp-dev .venv/.stamp-lab)")
    if not (Path(sys.prefix) / "bin" / "jupyter").exists():
        pytest.skip(f"no {sys.prefix}/bin/jupyter")


def test_make_lab_opens_a_notebook_in_chromium_and_runs_its_first_cells(chromium, lab_env, tmp_path):
    register, server_cmd, kernel, display = lab_commands()
    r = subprocess.run(register, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

    # Jupyter's per-user folders in tmp_path: no user config, and settings that keep the test from writing
    # the notebook (no autosave) and the page free of the news prompt (no network is asked for).
    jcfg = tmp_path / "jupyter-config"
    settings = jcfg / "lab" / "user-settings" / "@jupyterlab"
    for plugin, value in (("docmanager-extension/plugin", {"autosave": False}),
                          ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False})):
        (settings / f"{plugin}.jupyterlab-settings").parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(value))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(jcfg), JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"), S2DM_PROFILE="ci")
    env.pop("S2DM_NO_INSTALL", None)
    before = (ROOT / NOTEBOOK).read_bytes()

    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    server_log, chrome_log = tmp_path / "lab.log", tmp_path / "chromium.log"
    server = browser = devtools = None
    shot = tmp_path / "lab.png"
    try:
        with server_log.open("w") as log:
            server = subprocess.Popen(f"exec {server_cmd} --no-browser --ServerApp.ip=127.0.0.1 "
                                      f"--ServerApp.port={port} --ServerApp.port_retries=0 "
                                      f"--IdentityProvider.token={token}", shell=True, cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            assert server.poll() is None, f"the server exited ({server.returncode}):\n{server_log.read_text()[-3000:]}"
            return get_json(f"{base}/api/status?token={token}")
        wait("the JupyterLab server", up, 90)
        specs = get_json(f"{base}/api/kernelspecs?token={token}")
        assert set(specs["kernelspecs"]) == {kernel} and specs["default"] == kernel, specs
        argv0 = Path(specs["kernelspecs"][kernel]["spec"]["argv"][0])
        assert argv0.parent.resolve() == Path(sys.executable).parent.resolve(), argv0

        profile = tmp_path / "chromium-profile"
        with chrome_log.open("w") as log:
            browser = subprocess.Popen(
                [chromium, "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                 f"--user-data-dir={profile}", "--window-size=1280,900", "--hide-scrollbars",
                 *(["--no-sandbox"] if os.getuid() == 0 else []), "about:blank"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def devtools_port():
            assert browser.poll() is None, f"Chromium exited ({browser.returncode}):\n{chrome_log.read_text()[-3000:]}"
            return int((profile / "DevToolsActivePort").read_text().split()[0])
        dport = wait("Chromium's DevTools port", devtools_port, 60)
        page = wait("Chromium's page", lambda: next(t for t in get_json(f"http://127.0.0.1:{dport}/json/list")
                                                    if t["type"] == "page"), 30)
        devtools = DevTools(page["webSocketDebuggerUrl"])
        devtools.call("Page.enable")
        devtools.call("Page.navigate", url=f"{base}/lab/tree/{NOTEBOOK}?token={token}")

        def cells():
            return devtools.js(CELLS_JS)
        shown = wait("the notebook's cells on the page", lambda: (c := cells()) and len(c) > 4 and c, 120)
        assert [c["kind"] for c in shown[:4]] == ["other", "code", "code", "code"], shown[:4]

        # The kernel: the project's (its display name in the toolbar), started without a dialog asking which.
        def kernel_ready():
            k = devtools.js(KERNEL_JS)
            assert not k["dialog"], f"JupyterLab asks: {k['dialog']}"
            sessions = get_json(f"{base}/api/sessions?token={token}")
            return k["name"] == display and sessions and sessions[0]["kernel"]["execution_state"] == "idle" and sessions
        sessions = wait(f"the kernel {display!r} idle", kernel_ready, 120)
        assert [s["kernel"]["name"] for s in sessions] == [kernel], sessions
        assert sessions[0]["path"] == NOTEBOOK, sessions

        # As a reader would: click the title cell, then Shift+Enter four times (title, setup, parameters, imports).
        x, y = devtools.js(FIRST_CELL_BOX_JS)
        devtools.click(x, y)
        for _ in range(4):
            devtools.key("Enter", "Enter", 13, modifiers=8)  # 8: Shift
            time.sleep(0.3)

        def ran():
            c = cells()
            errors = [o["text"] for cell in c[:4] for o in cell["outputs"] if "error" in o["mime"]]
            assert not errors, f"a cell failed: {errors}"
            # the setup cell's input is collapsed (source_hidden), so it shows no prompt: its output instead
            return c[1]["outputs"] and all(re.fullmatch(r"\[\d+\]:", cell["prompt"].strip()) for cell in c[2:4]) and c
        try:
            done = wait("the setup, parameters and imports cells to finish", ran, 180, shows=lambda: cells()[:4])
        finally:
            try:
                devtools.js(SCROLL_TOP_JS)
                time.sleep(1)
                devtools.screenshot(shot)  # also when it failed: what the page showed
            except Exception as e:  # noqa: BLE001  (the failure above is the one to report)
                print(f"no screenshot: {e!r}")
        assert [cell["prompt"].strip() for cell in done[1:4]] == ["", "[2]:", "[3]:"], done[1:4]
        setup_out = [o["text"].strip() for o in done[1]["outputs"]]
        assert setup_out == [f"lib: {ROOT / 'lib'}"], setup_out
        assert devtools.js(KERNEL_JS)["name"] == display
        if os.environ.get("S2DM_LAB_SCREENSHOT"):
            shutil.copyfile(shot, ROOT / os.environ["S2DM_LAB_SCREENSHOT"])

        for s in get_json(f"{base}/api/sessions?token={token}"):  # shut the kernel down through the server
            req = urllib.request.Request(f"{base}/api/sessions/{s['id']}?token={token}", method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()
    finally:
        if devtools is not None:
            try:
                devtools.call("Browser.close", timeout=5)
            except Exception:  # noqa: BLE001  (killed below anyway)
                pass
            devtools.close()
        stop(browser)
        stop(server, grace=20)
    assert (ROOT / NOTEBOOK).read_bytes() == before, f"{NOTEBOOK} was modified by the lab session"
