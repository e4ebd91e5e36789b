"""Operating points (issue "Thin links", item 2): under a thin link the sender codes a smaller
picture and the receiver shows it at the source's size; the choice follows the shipped table, moves
under hysteresis, steps down when the encoder can't hold the rate, and only for a receiver that says
it shows scaled pictures."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from latentcomm.codecs.video import VideoCodec
from latentcomm.errors import RemoteProtocolError
from latentcomm.operating import LADDER, MIN_DWELL_S, OperatingPolicy, load_table, rung_for
from tests.conftest import PYTHON, REPO, script_env


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


TABLE = {"h264": [0.1, 0.05, 0.02, 0.0]}


def test_the_rung_follows_bits_per_pixel_with_hysteresis_and_a_dwell():
    clock = Clock()
    policy = OperatingPolicy("h264", 640, 352, 10, table=TABLE, clock=clock)
    rate = 640 * 352 * 10  # bits a second per unit of bits per pixel
    assert policy.coded_size() == (640, 352) and not policy.choose(0.03 * rate)  # not enabled: full size
    policy.enable()
    assert policy.choose(0.03 * rate) and policy.rung == LADDER[2] and policy.coded_size() == (320, 176)
    clock.t += 1
    assert not policy.choose(0.2 * rate)  # within the dwell
    clock.t += MIN_DWELL_S
    assert not policy.choose(0.054 * rate)  # above rung 1's threshold, but not by the hysteresis
    assert policy.choose(0.06 * rate) and policy.rung == LADDER[1] and policy.coded_size() == (480, 264)
    clock.t += MIN_DWELL_S
    assert policy.choose(0.005 * rate) and policy.rung.stride == 2
    assert rung_for(TABLE["h264"], 1.0) == 0 and rung_for([], 0.01) == 0


def test_an_encoder_that_overshoots_steps_the_stream_down_and_is_held_there():
    clock = Clock()
    policy = OperatingPolicy("h264", 640, 352, 10, table=TABLE, clock=clock)
    policy.enable()
    rate = 0.5 * 640 * 352 * 10  # the table says full size
    assert not policy.choose(rate)
    for _ in range(25):  # 2.5 s spending twice the target
        clock.t += 0.1
        policy.on_frame(int(2 * rate / 8 / 10), rate)
    clock.t += MIN_DWELL_S
    assert policy.choose(rate) and policy.rung == LADDER[1] and "2.0x its target" in policy.reason
    clock.t += MIN_DWELL_S
    assert not policy.choose(rate)  # held (HOLD_S), though the table would go back up
    # A link that can't take the stream (the live source supersedes its frames) steps it down too.
    produced = dropped = 0
    for _ in range(25):
        clock.t += 0.1
        produced, dropped = produced + 3, dropped + 2
        policy.on_frame(int(rate / 8 / 10), rate, produced, dropped)
    assert policy.choose(rate) and policy.rung == LADDER[2] and "took 33% of the source's frames" in policy.reason


def test_a_frame_coded_smaller_is_shown_at_its_picture_size_within_bounds():
    tx, rx = VideoCodec("h264", 200_000, 10), VideoCodec("h264")
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3), np.uint8))
    enc = tx.encode_picture(source.resize((80, 48)))
    assert rx.decode_picture(enc.shape, enc.payload, (96, 160)).shape == (96, 160, 3)
    for shown in ((24, 40), (96 * 5, 160), (48, 160 * 5)):  # smaller, or more than 4x a side: refused
        with pytest.raises(RemoteProtocolError, match="at most 4x"):
            VideoCodec("h264").decode_picture(enc.shape, enc.payload, shown)


def test_the_shipped_table_covers_the_video_codecs():
    table = load_table()
    for codec in ("h264", "av1"):
        thresholds = table[codec]
        assert len(thresholds) == len(LADDER) and thresholds[-1] == 0
        assert thresholds == sorted(thresholds, reverse=True)


def test_a_thin_link_codes_smaller_and_the_receiver_shows_the_source_size(tmp_path, start_receiver):
    """Real processes: at a rate the shipped table codes smaller, the first key frame goes at full size
    (the receiver hasn't said yet that it shows scaled pictures), then a key frame at the table's size,
    and every picture saved is the source's size."""
    from latentcomm.scenes import station_scene

    thresholds = load_table()["h264"]
    w, h = 640, 352
    rate = next(r for r in (64_000, 32_000, 16_000) if rung_for(thresholds, r / (w * h * 10)) > 0)
    rung = LADDER[rung_for(thresholds, rate / (w * h * 10))]
    video = station_scene(tmp_path / "station.mkv", seconds=3.0)
    out = tmp_path / "out"
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--out", str(out), "--save-frames")
    tx = subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--port", str(rx.port), "--video", str(video),
         "--resolution", f"{w}x{h}", "--bandwidth", str(rate), "--json"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    rx.stop()
    summary = next(r for r in map(json.loads, tx.stdout.splitlines()) if r.get("summary"))
    # The table's rung first; a busy machine that drops frames may step further down (never up).
    labels = [r.label for r in LADDER]
    assert labels.index(summary["operating_point"]) >= labels.index(rung.label)
    assert summary["operating_point_changes"] >= 1
    shown = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert shown[0]["coded_size"] == [h, w] and shown[0]["frame_type"] == "key"
    small = [r for r in shown if r["coded_size"] != [h, w]]
    assert small and small[0]["frame_type"] == "key"
    assert small[0]["coded_size"] == list(rung.size(w, h)[::-1])
    for r in shown:
        assert r["image_size"] == [h, w] and Image.open(r["recon_path"]).size == (w, h)


def test_a_video_without_codec_streams_with_the_codec_auto_chose_and_says_why(tmp_path, start_receiver):
    """--codec auto is the default for --video: a trial at start-up picks the codec (and preset) this
    machine runs in real time, says so once on stderr, and the receiver gets that codec's frames."""
    from tests.videos import make_video

    video = make_video(tmp_path / "pan.mp4", frames=20, fps=10, size=128)
    out = tmp_path / "out"
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--out", str(out))
    tx = subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--port", str(rx.port), "--video", str(video), "--bandwidth", "128k",
         "--json"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    rx.stop()
    said = [line for line in tx.stderr.splitlines() if line.startswith("--codec auto: ")]
    assert len(said) == 1 and "of a core at 10 fps" in said[0]
    chosen = said[0].split()[2]
    shown = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert chosen in ("av1", "h264") and shown and all(r["model"] == chosen for r in shown)
    # The receiver's side is told too: the first frame's text (the dashboard's and MCAP's log) says it.
    assert shown[0]["text"] == f"[{said[0]}]" and not any(r.get("text") for r in shown[1:])
    res = subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--port", "1", "--video", str(video), "--preset", "8"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "auto chooses its own" in res.stderr and "Traceback" not in res.stderr
