"""``moefusion demo`` in a real browser: start the server, drive the page with headless
Chromium, and save the screenshot the README shows (``docs/demo.png``).

Marked ``browser`` and run only when asked for (installing Chromium in CI costs too much):

    pip install -e ".[demo]" selenium && apt-get install -y chromium chromium-driver
    python -m pytest -q -m browser tests/test_demo_browser.py

It skips, saying what is missing, without gradio, selenium, chromium or chromedriver.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SCREENSHOT = ROOT / "docs" / "demo.png"
#: The README's screenshot stays small: palette PNG at most this many bytes.
MAX_SCREENSHOT_BYTES = 300_000
#: Seconds to wait for the server (torch, gradio and the weights load) and for a result.
START_TIMEOUT, RESULT_TIMEOUT = 180, 180


def _missing() -> list[str]:
    missing = [m for m in ("gradio", "selenium") if importlib.util.find_spec(m) is None]
    if _chromium() is None:
        missing.append("chromium")
    if shutil.which("chromedriver") is None:
        missing.append("chromedriver")
    return missing


def _chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"moefusion demo exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"moefusion demo did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    missing = _missing()
    if missing:
        pytest.skip(
            f"browser test needs {', '.join(missing)}: pip install -e '.[demo]' selenium && "
            "apt-get install -y chromium chromium-driver"
        )
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *sys.path]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "moefusion.cli", "demo", "--port", str(port), "--device", "cpu"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, proc, START_TIMEOUT)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(_chromium())
    for arg in (
        "--headless=new",
        "--no-sandbox",  # containers run as root
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    # the Debian driver, never one Selenium Manager would download
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _upload(driver, elem_id: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]")
    field.send_keys(str(path))
    # the page sends the file to the server first; Fuse before that would see no file
    shown = f"#{elem_id} td.filename[aria-label='{path.name}']"
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, shown))


def _wait_for_status(driver, expect: str, before: str) -> str:
    """The status line once it has changed from ``before`` and contains ``expect``."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, RESULT_TIMEOUT).until(
        lambda d: expect in (t := _text(d, "#demo-status")) and t != before
    )
    return _text(driver, "#demo-status")


def _fuse_and_wait(driver, expect: str) -> str:
    from selenium.webdriver.common.by import By

    before = _text(driver, "#demo-status")
    driver.find_element(By.CSS_SELECTOR, "#demo-fuse").click()
    return _wait_for_status(driver, expect, before)


def _pick_sample(driver, name: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = _text(driver, "#demo-status")
    driver.find_element(By.CSS_SELECTOR, "#demo-sample input").click()
    option = f"#demo-sample li[aria-label='{name}']"
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, option))
    driver.find_element(By.CSS_SELECTOR, option).click()
    return _wait_for_status(driver, name, before)


def _image_loaded(driver, elem_id: str) -> bool:
    return bool(
        driver.execute_script(
            "const i = document.querySelector(arguments[0]);"
            "return i !== null && i.complete && i.naturalWidth > 0;",
            f"#{elem_id} img",
        )
    )


def _wait_idle(driver) -> None:
    """Until no output shows Gradio's "processing" overlay (a pick can queue a second
    run of the same pair, which a loaded machine is still busy with)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 180).until(
        lambda d: "processing" not in d.find_element(By.TAG_NAME, "body").text
    )


def _save_screenshot(driver) -> None:
    from PIL import Image

    for _ in range(3):  # the page re-lays out at each size: grow the window until it fits
        _wait_idle(driver)
        height = driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
        )
        driver.set_window_size(1400, min(int(height) + 120, 4000))
        time.sleep(1.0)
    _wait_idle(driver)
    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    shot = shot.resize((1000, round(shot.height * 1000 / shot.width)), Image.Resampling.LANCZOS)
    small = shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    small.save(SCREENSHOT, optimize=True)


def test_upload_pick_fuse_gates_and_screenshot(server: str, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(server)
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#demo-ir input[type=file]")
    )
    # a mismatched pair first: a message on the page, no result
    _upload(driver, "demo-ir", SAMPLES / "ir" / "FLIR_00006.jpg")
    _upload(driver, "demo-vi", SAMPLES / "vi" / "00012N.png")
    status = _fuse_and_wait(driver, "Error")
    assert "500x329" in status and "640x480" in status
    assert "Traceback" not in driver.page_source

    # the matching visible image: fused images, gates, metrics and downloads appear
    driver.find_element(By.CSS_SELECTOR, "#demo-vi button[aria-label='Clear']").click()
    _upload(driver, "demo-vi", SAMPLES / "vi" / "FLIR_00006.jpg")
    status = _fuse_and_wait(driver, "Fused")
    assert "FLIR_00006" in status and "Experts that fired" in status
    WebDriverWait(driver, 30).until(
        lambda d: _image_loaded(d, "demo-fused") and _image_loaded(d, "demo-gates")
    )
    table = _text(driver, "#demo-metrics")
    for name in ("EN", "SF", "SD", "MI", "VIF", "AG", "SCD", "Qabf", "moefusion", "laplacian"):
        assert name in table
    for name in ("FLIR_00006_moefusion.png", "FLIR_00006_moefusion_color.png"):
        link = driver.find_element(
            By.CSS_SELECTOR, f"#demo-downloads a[download='{name}']"
        ).get_attribute("href")
        with urllib.request.urlopen(link, timeout=10) as r:  # the file a click downloads
            assert r.read(8) == b"\x89PNG\r\n\x1a\n"

    # a sample pair (a colour day scene for the screenshot): picking it fuses it
    status = _pick_sample(driver, "00095D")
    assert "Fused" in status and "640x480" in status
    shown = "#demo-ir td.filename[aria-label='00095D.png']"
    assert driver.find_elements(By.CSS_SELECTOR, shown)
    WebDriverWait(driver, 30).until(lambda d: _image_loaded(d, "demo-gates"))

    _save_screenshot(driver)
    assert SCREENSHOT.stat().st_size < MAX_SCREENSHOT_BYTES
