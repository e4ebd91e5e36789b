"""The receiver's video enhancer (``--enhance``): an untrained one changes nothing, the objective
trains and exports a model folder that loads, and the shipped one gains at identical bits on a scene
it never saw, through the real receiver."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from latentcomm.enhance import ENHANCER_DIR, EnhancerConfig, VideoEnhancer
from latentcomm.errors import ModelLoadError
from tests.conftest import PYTHON, REPO, script_env

#: What the shipped enhancer must gain on the held-out station scene at 256 kbit/s, 320x176 (measured
#: +0.93 dB over its 10 s when it was trained; at 64 kbit/s it gains nothing there: see
#: models/latentcomm-enhance-h264/README.md).
GAIN_FLOOR_DB = 0.5
shipped = pytest.mark.skipif(not (ENHANCER_DIR / "config.json").exists(), reason="no shipped enhancer")


def test_a_new_enhancer_is_the_identity():
    pixels = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    qp = np.full((4, 6), 35, np.float32)
    assert np.array_equal(VideoEnhancer(EnhancerConfig(width=8, depth=3)).enhance(pixels, qp), pixels)


def test_the_objective_trains_and_exports_a_loadable_model(tmp_path):
    out = tmp_path / "model"
    r = subprocess.run(
        [PYTHON, "-m", "latentcomm.training", "--objective", "enhance", "--run", str(tmp_path / "run"), "--pans", "2",
         "--minutes", "0.05", "--width", "8", "--depth", "3", "--no-eval", "--out", str(out)],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    model = VideoEnhancer.from_pretrained(out)
    assert model.config.width == 8 and json.loads((out / "training_state.json").read_text())["steps"] > 0
    with pytest.raises(ModelLoadError):
        VideoEnhancer.from_pretrained(tmp_path)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


@shipped
def test_the_shipped_enhancer_gains_at_identical_bits_on_a_scene_it_never_saw():
    """The station scene (a held-out photo with people crossing it) through the stream's own H.264
    encoder at 256 kbit/s, decoded once: the same access units, with and without the enhancer."""
    import tempfile
    from pathlib import Path

    from latentcomm.codecs.video import fit_picture
    from latentcomm.scenes import station_scene
    from latentcomm.stream import video_frames
    from latentcomm.training.enhance import code_frames

    model = VideoEnhancer.from_pretrained(ENHANCER_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        video = station_scene(Path(tmp) / "station.mkv", seconds=4.0)
        frames = [fit_picture(f.image, (320, 176)) for f in video_frames(video)]
    coded = code_frames(frames, 0.96 * 256_000 - 5600)
    gains = [
        _psnr(np.asarray(src), model.enhance(decoded, qp)) - _psnr(np.asarray(src), decoded)
        for (decoded, qp), src in zip(coded, frames, strict=True)
    ]
    assert np.mean(gains) > GAIN_FLOOR_DB, np.mean(gains)


@shipped
def test_a_receiver_with_enhance_streams_and_shows_better_pictures(tmp_path, start_receiver):
    """End to end through the real processes, and at the very same bits: the stream to a receiver
    with --enhance is recorded on its way (a proxy on loopback), its access units are decoded plainly
    here, and the receiver's enhanced pictures are better than those plain ones. (Two runs, one
    enhanced and one plain, differ in their bits on a busy machine: the live source drops frames.)"""
    from latentcomm.codecs.video import VideoCodec, fit_picture
    from latentcomm.scenes import station_scene
    from latentcomm.stream import video_frames
    from latentcomm.wire import v2
    from tests.test_security import Proxy

    video = station_scene(tmp_path / "station.mkv", seconds=3.0)
    source = {f.name: np.asarray(fit_picture(f.image, (320, 176))) for f in video_frames(video)}
    out = tmp_path / "enhanced"
    # "always": this test is about the pictures; whether a loaded machine keeps up is --enhance auto's
    # business (test_a_stream_too_fast_to_enhance_is_shown_unenhanced). --codec h264: the codec named on
    # the command line enhances too (it was once made before the enhancer and enhanced nothing).
    rx = start_receiver("--codec", "h264", "--no-show", "--json", "--out", str(out), "--save-frames",
                        "--enhance", "always")  # fmt: skip
    proxy = Proxy(rx.port)
    tx = subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--port", str(proxy.port), "--video", str(video),
         "--resolution", "320x176", "--bandwidth", "256k", "--json"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    rx.stop()
    proxy.close()
    enhanced = {}
    for line in (out / "images.jsonl").read_text().splitlines():
        r = json.loads(line)
        enhanced[r["name"]] = _psnr(source[r["name"]], np.asarray(Image.open(r["recon_path"])))
        assert r["enhanced"] is True
    # How many frames a loaded machine shows is the benchmark's figure; the pictures are this test's.
    assert len(enhanced) >= 5
    plain, decoder = {}, VideoCodec("h264")
    for recorded in proxy.streams:
        conn = v2.Connection(v2.Role.RECEIVER)
        conn.receive_data(bytes(recorded))
        conn.receive_eof()
        while isinstance(frame := conn.next_event(), v2.ImageFrame):
            pixels = decoder.decode_picture(frame.shape, frame.payload, frame.image_size)
            name = decoder.frame_name(frame.name, frame.payload)
            plain[name] = _psnr(source[name], pixels)
    common = sorted(set(plain) & set(enhanced))
    assert len(common) >= 5
    gain = np.mean([enhanced[n] - plain[n] for n in common])
    assert gain > 0, (gain, len(common))


@shipped
def test_a_stream_too_fast_to_enhance_is_shown_unenhanced():
    """The sender tells its frame rate; a stream whose pictures the enhancer is predicted (from its
    timing on this machine) to take more than half the time between frames for is shown unenhanced
    from its first picture, rather than fall behind."""
    from latentcomm.codecs.video import VideoCodec, fit_picture
    from tests.test_video import scene

    model = VideoEnhancer.from_pretrained(ENHANCER_DIR)
    for fps, keep_up, enhanced in ((1000.0, True, False), (1.0, True, True), (1000.0, False, True)):
        # 1.5 ms between frames (the header's 655 fps), 1 s; and --enhance always, which doesn't ask
        model.keep_up = keep_up
        tx = VideoCodec("h264", 400_000, fps, key_interval=100)
        rx = VideoCodec("h264", enhancer=model)
        seen = []
        for i in range(6):
            unit = tx.encode_picture(fit_picture(scene(i), (320, 176)), captured=i / fps)
            rx.decode_picture(unit.shape, unit.payload, unit.shape[1:])
            seen.append(rx.payload_facts(unit.payload)["enhanced"])
        assert seen == [enhanced] * 6, (fps, seen)
