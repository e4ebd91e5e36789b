"""The receiver's live dashboard, in a real browser: the distribution's headless Chromium, driven by
selenium through chromedriver, watching real images sent by the real sender arrive without a reload.

Set LATENTCOMM_SCREENSHOT=docs/dashboard.png to keep the run's screenshot (the README shows it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, run_script, script_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="headless Chromium not installed (apt install chromium chromium-driver)"
)


def dashboard_url(rx) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in rx.stderr.splitlines():
            if line.startswith("Dashboard on "):
                return line.split()[-1]
        time.sleep(0.1)
    raise AssertionError(rx.stderr)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,1100",
    ):
        opts.add_argument(arg)
    # Chromium leaves its singleton-socket folder in TMPDIR: give it one removed afterwards. Short, in
    # the system's temp dir: a socket's path must fit 108 bytes, which pytest's tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="lc-chromium-", ignore_cleanup_errors=True) as tmp:
        service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": tmp})
        driver = webdriver.Chrome(service=service, options=opts)
        driver.set_page_load_timeout(30)
        yield driver
        driver.quit()


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@needs_browser
def test_images_and_figures_appear_live_in_a_real_browser(tmp_path, start_receiver, browser):
    from selenium.webdriver.common.by import By

    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--dashboard", "127.0.0.1:0")
    url = dashboard_url(rx)
    browser.get(url)
    wait_for(lambda: browser.find_element(By.ID, "status").text == "live", what="the event stream")
    assert browser.find_element(By.ID, "empty").is_displayed()
    browser.execute_script("window.__sameDocument = true;")  # gone if the page reloads

    folder = tmp_path / "cam"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        src = Image.open(REPO / "temp" / "apple.jpeg").convert("RGB").resize((256, 256))
        src.rotate(90 * i).save(folder / name)
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"image": "b.png", "text": '{"temperature_c": 21.5}'}) + "\n")
    tx = run_script(
        "sender_sdvae.py", "--codec", "learned", "--port", str(rx.port), "--image", str(folder),
        "--text-file", str(texts), "--json", "--send-original", timeout=300,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr

    card = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".sender"), what="a sender card")[0]
    wait_for(lambda: card.find_element(By.CSS_SELECTOR, ".frames").text == "2", what="2 frames")
    assert browser.execute_script("return window.__sameDocument === true;")
    assert not browser.find_element(By.ID, "empty").is_displayed()
    assert card.get_attribute("data-sender") == "127.0.0.1"
    assert card.find_element(By.CSS_SELECTOR, ".text").text == '{"temperature_c": 21.5}'
    assert "b.png" in card.find_element(By.CSS_SELECTOR, "h3").text
    sent = [json.loads(line) for line in tx.stdout.splitlines() if '"name"' in line]
    wire = sum(r["frame_bytes"] for r in sent)
    assert card.find_element(By.CSS_SELECTOR, ".bytes").text == f"{wire:,}"
    bpp = float(card.find_element(By.CSS_SELECTOR, ".bpp").text)
    assert bpp == pytest.approx(8 * sum(r["payload_bytes"] for r in sent) / (2 * 256 * 256), abs=1e-3)
    psnr = float(card.find_element(By.CSS_SELECTOR, ".psnr").text.split()[0])
    assert 15 < psnr < 60
    for cls in ("recon", "original"):
        img = card.find_element(By.CSS_SELECTOR, f"img.{cls}")
        wait_for(lambda img=img: browser.execute_script("return arguments[0].naturalWidth;", img) == 256,
                 what=f"the {cls} image")  # fmt: skip
    history = browser.execute_script("return fetch('/api/state').then(r => r.json()).then(s => s.bytes_per_second);")
    assert sum(b for _, b in history) == wire

    # A frame the receiver refuses shows up with its reason, still without a reload.
    with socket.create_connection(("127.0.0.1", rx.port)) as s:
        s.sendall(b"LCV2\x07" + bytes(7))
        s.recv(1024)
    wait_for(lambda: browser.find_element(By.ID, "rejected-total").text == "1", what="the rejection")
    reason = browser.find_element(By.CSS_SELECTOR, "#rejections li").text
    assert "unsupported protocol version 7" in reason
    assert browser.execute_script("return window.__sameDocument === true;")
    shot = Path(os.environ.get("LATENTCOMM_SCREENSHOT", tmp_path / "dashboard.png"))
    if not shot.is_absolute():
        shot = REPO / shot
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0


def get(url: str, token: str | None = None, header: bool = False) -> int:
    if token and not header:
        url += ("&" if "?" in url else "?") + f"token={token}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token and header else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            if "/events" in url:
                resp.readline()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_token_guards_every_route(start_receiver):
    rx = start_receiver("--codec", "learned", "--no-show", "--dashboard", "127.0.0.1:0", "--dashboard-token", "s3cret")
    url = dashboard_url(rx)
    for path in ("", "api/state", "events", "image/x/recon.png"):
        assert get(url + path) == 401
        assert get(url + path, "wrong") == 401
    assert get(url, "s3cret") == 200
    assert get(url + "api/state", "s3cret", header=True) == 200
    assert get(url + "events", "s3cret") == 200
    assert get(url + "image/x/recon.png", "s3cret") == 404


def test_a_dashboard_beyond_loopback_needs_a_token():
    res = run_script("receiver_sdvae.py", "--codec", "learned", "--no-show", "--dashboard", "0.0.0.0:0")
    assert res.returncode == 1
    assert "refusing to serve the dashboard on 0.0.0.0 without --dashboard-token" in res.stderr
    bad = run_script("receiver_sdvae.py", "--codec", "learned", "--no-show", "--dashboard", "localhost:http")
    assert bad.returncode == 2 and "--dashboard: not a port number" in bad.stderr


@needs_browser
@pytest.mark.exclusive
def test_a_video_stream_plays_live_with_its_charts(tmp_path, start_receiver, browser):
    """An h264 stream under --bandwidth auto: the card's picture keeps changing without a reload, and
    it shows the stream's bit rate, the sender's latency and link estimate, charted."""
    from selenium.webdriver.common.by import By

    from tests.videos import make_video

    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--dashboard", "127.0.0.1:0")
    browser.get(dashboard_url(rx))
    wait_for(lambda: browser.find_element(By.ID, "status").text == "live", what="the event stream")
    browser.execute_script("window.__sameDocument = true;")
    video = make_video(tmp_path / "pan.mp4", frames=60, fps=10, size=256)
    tx = subprocess.Popen(
        [sys.executable, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--port", str(rx.port), "--video",
         str(video), "--bandwidth", "auto:1M"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(),
    )  # fmt: skip
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".sender"), what="a sender card")

    def text(selector: str) -> str:  # read afresh: the page redraws a card's contents on every frame
        return browser.execute_script(f"const e = document.querySelector('.sender {selector}'); "
                                      "return e ? (e.src || e.textContent) : '';")  # fmt: skip

    seen = set()
    deadline = time.monotonic() + 30
    while len(seen) < 5 and time.monotonic() < deadline:
        seen.add(text("img.recon"))
        time.sleep(0.3)
    assert len(seen) >= 5, "the picture did not keep changing"
    wait_for(lambda: text(".link").endswith("kbit/s"), what="the link rate")
    assert text(".latency").endswith(" ms")
    assert float(text(".bitrate").split()[0]) > 0
    assert browser.find_element(By.CSS_SELECTOR, ".sender canvas.series").is_displayed()
    assert "h264" in text(".last")
    assert browser.execute_script("return window.__sameDocument === true;")
    out, err = tx.communicate(timeout=120)
    assert tx.returncode == 0, err
    if shot := os.environ.get("LATENTCOMM_VIDEO_SCREENSHOT"):
        browser.save_screenshot(str(REPO / shot))


def test_two_named_streams_from_one_host_get_two_cards(tmp_path, start_receiver):
    """--name: two cameras on one host (and one key) are two streams: each its own dashboard card and
    its name in images.jsonl; a name that can't be one is a one-line error."""
    from tests.videos import make_video

    out = tmp_path / "out"
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--out", str(out), "--dashboard", "127.0.0.1:0")
    url = dashboard_url(rx)
    video = make_video(tmp_path / "pan.mp4", frames=10, fps=10, size=64)
    senders = [
        subprocess.Popen(
            [sys.executable, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--port", str(rx.port), "--video",
             str(video), "--bandwidth", "256k", "--name", name, "--json"],
            cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for name in ("front-cam", "rear-cam")
    ]
    for p in senders:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with urllib.request.urlopen(url + "api/state", timeout=10) as resp:
        cards = [s["sender"] for s in json.load(resp)["senders"]]
    assert sorted(cards) == ["127.0.0.1 (front-cam)", "127.0.0.1 (rear-cam)"], cards
    rows = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert {r["stream"] for r in rows} == {"front-cam", "rear-cam"}
    assert all(r["name"].startswith(r["stream"] + "/pan-") for r in rows)
    bad = run_script("sender_sdvae.py", "--port", "1", "--name", "a/b")
    assert bad.returncode == 2 and "--name" in bad.stderr and "Traceback" not in bad.stderr


def test_metrics_are_scraped_in_prometheus_format_behind_the_token(tmp_path, start_receiver):
    """GET /metrics: each named stream's frames, bytes and link rate, the refusals, as Prometheus'
    text format (parsed back with prometheus_client's own parser); the token guards it."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.videos import make_video

    rx = start_receiver("--codec", "learned", "--no-show", "--dashboard", "127.0.0.1:0", "--dashboard-token", "s3")
    url = dashboard_url(rx)
    assert get(url + "metrics") == 401
    video = make_video(tmp_path / "pan.mp4", frames=10, fps=10, size=64)
    tx = subprocess.run(
        [sys.executable, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--port", str(rx.port), "--video",
         str(video), "--bandwidth", "256k", "--name", "gate", "--json"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    acked = json.loads(tx.stdout.splitlines()[-1])["frames_acknowledged"]
    req = urllib.request.Request(url + "metrics", headers={"Authorization": "Bearer s3"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples = {(s.name, s.labels.get("stream")): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}  # fmt: skip
    assert samples[("latentcomm_frames_total", "127.0.0.1 (gate)")] == acked
    assert samples[("latentcomm_bytes_total", "127.0.0.1 (gate)")] > 0
    assert samples[("latentcomm_link_bits_per_second", "127.0.0.1 (gate)")] == 256_000
    assert samples[("latentcomm_refused_total", None)] == 0 and samples[("latentcomm_streams", None)] == 1
