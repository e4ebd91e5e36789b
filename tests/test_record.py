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
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--out", str(out), "--save-frames",
                        "--record", str(record))  # fmt: skip
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

    videos, logs, figures = [], [], []
    with record.open("rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        for schema, channel, _message in reader.iter_messages(topics=["/gate/stats"]):
            assert schema.name == "latentcomm.StreamFigures" and channel.message_encoding == "json"
            figures.append(json.loads(_message.data))
        fh.seek(0)
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        for schema, channel, _message, proto in reader.iter_decoded_messages(topics=["/gate/video", "/gate/log"]):
            if channel.topic == "/gate/video":
                assert schema.name == "foxglove.CompressedVideo" and proto.format == "h264"
                videos.append(bytes(proto.data))
            elif channel.topic == "/gate/log":
                logs.append(proto.message)

    assert len(videos) == len(shown) and logs == ["robot 7"] * len(shown)
    assert [f["frame_bytes"] for f in figures] == [r["frame_bytes"] for r in shown]
    assert all(f["link_bps"] == 512_000 for f in figures)
    assert [(f["coded_size"], f["image_size"]) for f in figures] == [(r["coded_size"], r["image_size"]) for r in shown]
    decoder = av.CodecContext.create("h264", "r")
    for unit, report in zip(videos, shown, strict=True):
        pictures = decoder.decode(av.Packet(unit))
        assert len(pictures) == 1
        want = np.asarray(Image.open(report["recon_path"]).convert("RGB"))
        assert np.array_equal(pictures[0].to_ndarray(format="rgb24"), want)  # the very picture shown

    # The recording replayed as a sender's live source, to another receiver.
    out2 = tmp_path / "out2"
    rx2 = start_receiver("--codec", "learned", "--no-show", "--json", "--out", str(out2))
    tx = subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--port", str(rx2.port), "--video", str(record),
         "--mcap-topic", "/gate/video", "--bandwidth", "1M", "--json"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    rx2.stop()
    replayed = [json.loads(line) for line in (out2 / "images.jsonl").read_text().splitlines()]
    assert len(replayed) >= len(shown) // 2 and all(r["name"].startswith("run-gate-video-") for r in replayed)
    bad = run_script("sender_sdvae.py", "--codec", "h264", "--port", "1", "--video", str(record), "--mcap-topic",
                     "/nope", timeout=60)  # fmt: skip
    assert bad.returncode == 1 and "no picture topic '/nope' (there: /gate/video)" in bad.stderr


def test_a_recording_is_never_overwritten(tmp_path):
    (tmp_path / "old.mcap").write_bytes(b"earlier run")
    r = run_script("receiver_sdvae.py", "--codec", "learned", "--no-show", "--port", "0", "--record",
                   str(tmp_path / "old.mcap"), timeout=60)  # fmt: skip
    assert r.returncode == 1 and "the file exists" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "old.mcap").read_bytes() == b"earlier run"


def test_a_foxglove_websocket_client_subscribes_and_decodes_the_live_stream(tmp_path, start_receiver):
    """--foxglove: a WebSocket client speaking Foxglove's protocol (here, with the websockets package)
    is advertised the stream's video topic once frames flow, subscribes, and gets H.264 access units
    that PyAV decodes from the first key frame on (a late viewer starts at a key frame)."""
    import asyncio
    import base64
    import socket
    import struct

    import av
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from websockets.asyncio.client import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--foxglove", f"127.0.0.1:{port}")
    video = make_video(tmp_path / "pan.mp4", frames=60, fps=10, size=128)
    tx = subprocess.Popen(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--port", str(rx.port), "--video", str(video),
         "--bandwidth", "512k", "--name", "gate", "--key-interval", "10", "--json"],
        cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    async def watch() -> list[bytes]:
        async with connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1", "foxglove.websocket.v1"],
                           open_timeout=30) as ws:  # fmt: skip
            channel = None
            units: list[bytes] = []
            cls = None
            async with asyncio.timeout(90):
                while len(units) < 25:  # a key frame (every 10 frames) among them
                    msg = await ws.recv()
                    if isinstance(msg, str):
                        op = json.loads(msg)
                        for ch in op.get("channels", []) if op.get("op") == "advertise" else []:
                            if ch["topic"] == "/gate/video" and channel is None:
                                channel = ch
                                files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(ch["schema"]))
                                pool = descriptor_pool.DescriptorPool()
                                for f in files.file:
                                    pool.Add(f)
                                cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(ch["schemaName"]))
                                await ws.send(json.dumps({"op": "subscribe",
                                                          "subscriptions": [{"id": 7, "channelId": ch["id"]}]}))
                    elif msg[0] == 0x01:  # message data: opcode, subscription id, log time, payload
                        sub, _t = struct.unpack_from("<IQ", msg, 1)
                        assert sub == 7
                        proto = cls.FromString(msg[13:])
                        assert proto.format == "h264"
                        units.append(bytes(proto.data))
            return units

    try:
        units = asyncio.run(watch())
    finally:
        tx.wait(120)
        rx.stop()
    assert tx.returncode == 0, tx.stderr.read()
    decoder = av.CodecContext.create("h264", "r")
    pictures = []
    for unit in units:
        try:
            pictures += decoder.decode(av.Packet(unit))
        except av.error.InvalidDataError:
            assert not pictures  # joined mid-stream: nothing decodes before the next key frame
    assert pictures and all((p.width, p.height) == (128, 128) for p in pictures)
