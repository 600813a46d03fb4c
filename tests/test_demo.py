"""anyup demo: the backend directly, and the page in a real headless Chromium (Selenium)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; from anyup.cli import main; sys.exit(main())"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def test_backend_panels_attention_and_file(tmp_path, one_thread):
    pytest.importorskip("skimage")
    from safetensors import safe_open

    from anyup.demo import DemoBackend, DemoConfig
    from anyup.demo.app import sample_photo

    backend = DemoBackend(DemoConfig(encoders=("efficientnet_lite0",), input_size=112, out_dir=str(tmp_path)))
    assert "anyup_offline" in backend.weights
    layers, default = backend.layers("efficientnet_lite0")
    assert default in layers
    photo = sample_photo("chelsea")  # (300, 451, 3)
    views = backend.run(photo, "efficientnet_lite0", default, "anyup_offline")
    h, w = views.state["size"]
    assert (h, w) == (112, 176)  # short side 112, multiples of the stride 16
    for panel in (views.lowres, views.bilinear, views.anyup, views.attention):
        assert panel.shape == (h, w, 3) and panel.dtype == np.uint8

    # AnyUp's panel has sharper detail than bilinear's: more energy in neighbouring-pixel differences
    def grad(a):
        a = a.astype(np.float32)
        return np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()

    assert grad(views.anyup) > grad(views.bilinear)
    with safe_open(views.features_file, "pt") as f:
        assert f.get_tensor("features").shape[-2:] == (h, w)
        assert f.metadata()["weights"] == "anyup_offline"
    # a click elsewhere looks elsewhere
    other = backend.attention(views.state, 5, 5)
    assert other.shape == (h, w, 3) and not np.array_equal(other, views.attention)
    with pytest.raises(ValueError, match="encoder must be one of"):
        backend.run(photo, "resnet50", "layer3", "anyup_offline")
    with pytest.raises(ValueError, match="run a photo first"):
        backend.attention({}, 1, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"anyup demo exited early (rc {proc.returncode}); see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _img_src(driver, elem_id: str) -> str | None:
    from selenium.common.exceptions import NoSuchElementException

    try:
        return driver.find_element("css selector", f"#{elem_id} img").get_attribute("src")
    except NoSuchElementException:
        return None


@pytest.mark.slow
def test_demo_page_in_headless_chromium(tmp_path):
    """The page loads, a sample photo runs, the three panels appear, a click updates the attention picture."""
    pytest.importorskip("gradio")
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium and chromium-driver must be installed (.ci/run does it)")
        pytest.skip("apt-get install chromium chromium-driver")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    # docs/images/demo_*.png: ANYUP_DEMO_SCREENSHOTS=docs/images ANYUP_DEMO_INPUT_SIZE=224 pytest -k chromium
    shots = Path(os.environ.get("ANYUP_DEMO_SCREENSHOTS", tmp_path))
    input_size = os.environ.get("ANYUP_DEMO_INPUT_SIZE", "112")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [sys.executable, "-c", CLI, "demo", "--port", str(port), "--input-size", input_size,
         "--encoder", "efficientnet_lite0"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_http(url, server, timeout=180)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1500,1100"):  # fmt: skip
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=opts)
        driver.get(url)
        wait = WebDriverWait(driver, 240, poll_frequency=0.5)
        wait.until(lambda d: d.find_elements("css selector", "#run-button"))
        wait.until(lambda d: _img_src(d, "photo"))  # the sample photo is loaded
        driver.save_screenshot(str(tmp_path / "page.png"))

        driver.find_element("css selector", "#run-button").click()
        wait.until(lambda d: all(_img_src(d, f"panel-{p}") for p in ("lowres", "bilinear", "anyup", "attention")))
        wait.until(lambda d: d.find_elements("css selector", "#features-file a[href]"))
        driver.execute_script("document.getElementById('panel-lowres').scrollIntoView()")
        driver.save_screenshot(str(shots / "demo_panels.png"))
        before = _img_src(driver, "panel-attention")

        panel = driver.find_element("css selector", "#panel-anyup img")
        w, h = panel.size["width"], panel.size["height"]
        assert w > 50 and h > 30
        # a pixel at the left quarter, upper third (offsets are from the element's centre)
        ActionChains(driver).move_to_element_with_offset(panel, -w // 4, -h // 6).click().perform()
        wait.until(lambda d: _img_src(d, "panel-attention") not in (None, before))
        driver.save_screenshot(str(shots / "demo_attention_click.png"))
        assert (shots / "demo_panels.png").stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
