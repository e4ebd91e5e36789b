"""The receiver's --record FILE.mcap: a live H.264 stream recorded as it arrived, read back with the
``mcap`` package (its protobuf decoder) and decoded frame for frame with PyAV: the very pictures the
receiver showed."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PYTHON, REPO, run_script, script_env
from tests.videos import make_video

pytest.importorskip("foxglove", reason="foxglove-sdk not installed (requirements.txt)")
pytest.importorskip("mcap_protobuf", reason="mcap-protobuf-support not installed (requirements-dev.txt)")


def test_a_live_stream_is_recorded_as_it_arrived_and_decodes_frame_for_frame(tmp_path, start_receiver):
    import av
    from mcap.reader import make_reader
    from mcap_protobuf.decoder import DecoderFactory

    record, out = tmp_path / "run.mcap", tmp_path / "out"
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--out", str(out), "--record", str(record))
    video = make_video(tmp_path / "pan.mp4", frames=30, fps=10, size=128)
    tx = subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--port", str(rx.port), "--video", str(video),
         "--bandwidth", "512k", "--name", "gate", "--text", "robot 7", "--json"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    rx.stop()
    shown = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert shown

    videos, logs = [], []
    with record.open("rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        for schema, channel, _message, proto in reader.iter_decoded_messages():
            if channel.topic == "/gate/video":
                assert schema.name == "foxglove.CompressedVideo" and proto.format == "h264"
                videos.append(bytes(proto.data))
            elif channel.topic == "/gate/log":
                logs.append(proto.message)
    assert len(videos) == len(shown) and logs == ["robot 7"] * len(shown)
    decoder = av.CodecContext.create("h264", "r")
    for unit, report in zip(videos, shown, strict=True):
        pictures = decoder.decode(av.Packet(unit))
        assert len(pictures) == 1
        want = np.asarray(Image.open(report["recon_path"]).convert("RGB"))
        assert np.array_equal(pictures[0].to_ndarray(format="rgb24"), want)  # the very picture shown


def test_a_recording_is_never_overwritten(tmp_path):
    (tmp_path / "old.mcap").write_bytes(b"earlier run")
    r = run_script("receiver_sdvae.py", "--codec", "learned", "--no-show", "--port", "0", "--record",
                   str(tmp_path / "old.mcap"), timeout=60)  # fmt: skip
    assert r.returncode == 1 and "the file exists" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "old.mcap").read_bytes() == b"earlier run"
