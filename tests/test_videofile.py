"""Video kept as video: a receiver with --out writes each stream's access units, as they arrived, into
a Matroska file (no re-encoding), PNGs of video frames only with --save-frames.

The files are read back with PyAV and decoded frame for frame: the pictures are the very ones the
receiver showed (its --save-frames PNGs), the frame numbers in images.jsonl point at them, a new
file starts when the coded size changes, and --max-disk never deletes a file still being written.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from latentcomm.codecs.video import VIDEO_CODECS, VideoCodec, parse_payload
from latentcomm.store import OutputStore
from tests.conftest import PYTHON, REPO, script_env
from tests.test_video import scene
from tests.videos import make_video


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def send(port: int, video: Path, codec: str, *extra: str) -> dict:
    res = subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--port", str(port), "--video", str(video), "--codec", codec,
         "--fps", "10", "--bandwidth", "512k", "--json", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=script_env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_a_stream_is_recorded_as_video_and_plays_back_as_the_receiver_showed_it(codec, tmp_path, start_receiver):
    out = tmp_path / "out"
    rx = start_receiver("--no-show", "--json", "--out", str(out), "--save-frames")
    video = make_video(tmp_path / "pan.mp4", frames=15, size=128)
    summary = send(rx.port, video, codec, "--name", "gate")
    rx.stop()
    rows = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert len(rows) == summary["frames_acknowledged"] >= 10
    files = sorted(out.glob("*_video-gate.mkv"))
    assert len(files) == 1 and {r["video_path"] for r in rows} == {str(files[0])}
    assert [r["video_frame"] for r in rows] == list(range(len(rows)))
    with av.open(str(files[0])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "libdav1d", "av1") and (stream.width, stream.height) == (128, 128)
        if codec == "h264":
            assert stream.codec_context.extradata[:1] == b"\x01"  # avcC, not the stream's Annex B
    frames = decoded(files[0])
    assert len(frames) == len(rows)
    for row, frame in zip(rows, frames, strict=True):
        assert np.array_equal(frame, np.asarray(Image.open(row["recon_path"]).convert("RGB")))


def test_without_save_frames_a_video_stream_writes_no_pngs(tmp_path, start_receiver):
    out = tmp_path / "out"
    rx = start_receiver("--no-show", "--json", "--out", str(out))
    video = make_video(tmp_path / "pan.mp4", frames=12, size=128)
    summary = send(rx.port, video, "h264")
    rx.stop()
    assert not list(out.glob("*.png"))
    (mkv,) = out.glob("*.mkv")
    assert len(decoded(mkv)) == summary["frames_acknowledged"]
    png_bytes = sum(len(np.asarray(f).tobytes()) for f in decoded(mkv)) // 3  # what even a packed PNG would near
    assert mkv.stat().st_size < png_bytes


def _units(codec: str, sizes: list[tuple[int, int]]) -> list:
    """Real access units: a stream whose coded size changes (at a key frame) as a thin link makes it."""
    units = []
    for w, h in sizes:
        tx = VideoCodec(codec, 300_000, 10)
        units += [tx.encode_picture(scene(i, w, h), captured=i / 10) for i in range(4)]
    return units


@pytest.mark.parametrize("codec", sorted(VIDEO_CODECS))
def test_a_new_coded_size_starts_a_new_file_and_each_plays(codec, tmp_path):
    store = OutputStore(tmp_path)
    paths = []
    for i, enc in enumerate(_units(codec, [(160, 96), (120, 72)])):
        facts, unit = parse_payload(enc.payload)
        paths.append(store.save_video("s", "cam 1/x", codec, unit, facts.key, enc.shape[1:], 0.1 * i)[0])
    store.close()
    first, second = sorted(set(paths))
    assert first.name == "0001_video-cam_1_x.mkv" and second.name == "0002_video-cam_1_x.mkv"
    assert [f.shape for f in decoded(first)] == [(96, 160, 3)] * 4
    assert [f.shape for f in decoded(second)] == [(72, 120, 3)] * 4
    assert OutputStore(tmp_path).next_index == 3  # a restarted receiver numbers on past the videos


def test_an_inter_frame_without_its_file_is_not_recorded(tmp_path):
    store = OutputStore(tmp_path)
    enc = _units("h264", [(160, 96)])[1]
    facts, unit = parse_payload(enc.payload)
    assert not facts.key and store.save_video("s", "cam", "h264", unit, False, (96, 160), 0.0) is None
    assert not list(tmp_path.iterdir())


def test_max_disk_prunes_old_files_but_never_a_video_being_written(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "0001_recon.png")
    store = OutputStore(tmp_path, max_bytes=1)
    for i, enc in enumerate(_units("h264", [(160, 96)])):
        facts, unit = parse_payload(enc.payload)
        path, _ = store.save_video("s", "cam", "h264", unit, facts.key, (96, 160), 0.1 * i)
    assert path.exists() and not (tmp_path / "0001_recon.png").exists()  # the old picture went, the video stays
    store.close()
    assert len(decoded(path)) == 4
