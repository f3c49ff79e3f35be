"""Headless Chromium for the tests that look at pages as a user would (viewer, report).

:func:`chrome` starts Debian's ``chromium`` through ``chromium-driver`` with selenium, with software
WebGL (SwiftShader) so that viser's three.js canvas renders without a GPU. Where selenium, chromium or
chromedriver is missing the test is skipped with the reason, unless ``CI=true``: CI installs the
browser (``.ci/run``), so there a missing browser fails the test instead of hiding it.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)
#: Hides everything but viser's canvases (the 3D view and its transparent overlay): the control panel
#: and notifications float over them. Returns the largest canvas's page rectangle [x, y, w, h] (CSS px).
ONLY_CANVAS_JS = """
const cs = Array.from(document.querySelectorAll('canvas'));
if (!cs.length) return null;
const keep = new Set();
for (const c of cs) for (let e = c; e; e = e.parentElement) keep.add(e);
for (const e of document.body.querySelectorAll('*')) {
  if (!keep.has(e) && !cs.some(c => e.contains(c))) e.style.setProperty('visibility', 'hidden', 'important');
}
const c = cs.reduce((a, b) => a.clientWidth * a.clientHeight >= b.clientWidth * b.clientHeight ? a : b);
const r = c.getBoundingClientRect();
return [r.left, r.top, r.width, r.height];
"""


def unavailable(why: str) -> None:
    msg = f"{why}: the browser tests need selenium (pip install '.[test]') and Debian's chromium and chromium-driver " \
          "(apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{msg} (CI=true: .ci/run installs them, so this is a failure)")
    pytest.skip(msg)


def chrome(width: int = 1000, height: int = 700):
    """A headless Chromium ``webdriver`` (the caller quits it), or a skip / CI failure (see the module doc)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed")
    binary = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    driver = next((shutil.which(d) for d in DRIVER if shutil.which(d)), None)
    if binary is None or driver is None:
        unavailable(f"{'chromium' if binary is None else 'chromedriver'} not found on PATH")
    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--disable-dev-shm-usage", "--force-device-scale-factor=1",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(driver))


def screenshot(driver) -> np.ndarray:
    """The viewport as ``[H, W, 3]`` uint8."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


def canvas_pixels(driver) -> np.ndarray | None:
    """Screenshot of viser's 3D canvas alone (overlays hidden): ``[h, w, 3]`` uint8, None without a canvas."""
    rect = driver.execute_script(ONLY_CANVAS_JS)
    if rect is None:
        return None
    shot = screenshot(driver)
    x, y, w, h = (round(v) for v in rect)
    return shot[max(0, y) : y + h, max(0, x) : x + w]


def block_means(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``img [H, W, 3]`` averaged over a ``rows x cols`` grid of blocks (float ``[rows, cols, 3]``)."""
    H, W = img.shape[:2]
    ys = np.linspace(0, H, rows + 1).round().astype(int)
    xs = np.linspace(0, W, cols + 1).round().astype(int)
    return np.array([[img[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].reshape(-1, 3).mean(0) for j in range(cols)]
                     for i in range(rows)])
