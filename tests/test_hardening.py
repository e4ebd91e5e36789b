"""What broke when tried as a new user would (issue "Hardening"), each with a test that fails on the
broken behaviour: bad --out, decompression bombs in a folder, non-UTF-8 names, unbounded --size,
float and odd image modes, and a rejected legacy frame that looked delivered."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from latentcomm.errors import ImageError
from latentcomm.images import load_image, to_rgb
from latentcomm.wire import v2
from latentcomm.wire.encodings import COMP_NONE, ENC_FLOAT16
from tests.conftest import run_script


def test_out_pointing_at_a_file_is_refused_at_start(tiny_model, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    r = run_script("receiver_sdvae.py", "--port", "0", "--model", str(tiny_model), "--no-show", "--out", str(blocker))
    assert r.returncode == 1 and "exists and is not a directory" in r.stderr and "Traceback" not in r.stderr


def test_a_failed_save_fails_that_image_only_and_the_sender_is_told(tiny_model, start_receiver, tmp_path):
    out = tmp_path / "out"
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--out", str(out))
    (out / "0001_recon.png").mkdir()  # the first save hits a folder where its file should go
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(imgs / f"{i}.png")
    tx = run_script(
        "sender_sdvae.py", "--model", str(tiny_model), "--port", str(rx.port), "--image", str(imgs), "--size", "64",
        "--json",
    )  # fmt: skip
    lines = [json.loads(x) for x in tx.stdout.splitlines()]
    assert tx.returncode == 1  # one image was not stored, and the sender says so
    assert [r.get("acknowledged") for r in lines[:2]] == [False, True]
    assert "not saved" in lines[0]["ack_message"]
    assert "not saved" in rx.next_json()["error"]
    assert rx.next_json()["seq"] == 2
    assert rx.proc.poll() is None  # still serving


def test_a_decompression_bomb_in_a_folder_is_reported_and_the_rest_is_sent(tiny_model, start_receiver, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("1", (20000, 10000)).save(folder / "0-bomb.png")  # 200 megapixels, a tiny file
    Image.new("RGB", (64, 64), "red").save(folder / "1-ok.png")
    with pytest.raises(ImageError, match="refusing"):
        load_image(folder / "0-bomb.png")
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--out", str(tmp_path / "out"))
    tx = run_script("sender_sdvae.py", "--model", str(tiny_model), "--port", str(rx.port), "--image", str(folder),
                    "--size", "64", "--json")  # fmt: skip
    lines = [json.loads(x) for x in tx.stdout.splitlines()]
    assert "Traceback" not in tx.stderr
    assert lines[0]["acknowledged"] is False and "refusing" in lines[0]["error"]
    assert lines[1]["acknowledged"] is True and rx.next_json()["name"] == "1-ok.png"


def test_a_name_that_is_not_utf8_is_sent_escaped():
    name = os.fsdecode(b"caf\xe9.png")  # how Python shows a Latin-1 file name on a UTF-8 system
    frame = v2.ImageFrame(1, "m@0", ENC_FLOAT16, COMP_NONE, (4, 1, 1), (8, 8), b"\0" * 8, name)
    conn = v2.Connection(v2.Role.RECEIVER)
    conn.receive_data(v2.encode_image(frame))
    assert conn.next_event().name == "caf\\udce9.png"


def test_size_has_an_upper_bound_that_names_the_limit():
    r = run_script("sender_sdvae.py", "--size", "65536")
    assert r.returncode == 2 and "4096" in r.stderr and "MemoryError" not in r.stderr


def test_odd_modes_keep_their_pixel_values():
    """Each mode converts by its real range: no white 16-bit images, no black floats, alpha composited."""
    deep = Image.fromarray(np.full((4, 4), 32768, np.uint16))
    assert np.asarray(to_rgb(deep))[0, 0].tolist() == [128, 128, 128]
    flt = Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F")
    assert np.asarray(to_rgb(flt))[0, 0].tolist() == [128, 128, 128]
    flt255 = Image.fromarray(np.full((4, 4), 200.0, np.float32), mode="F")
    assert np.asarray(to_rgb(flt255))[0, 0].tolist() == [200, 200, 200]
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black composites to white
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("RGBA", (4, 4), (0, 0, 255, 128))
    assert np.asarray(to_rgb(half))[0, 0].tolist() == [127, 127, 255]
    pal = Image.new("P", (4, 4))
    pal.putpalette([10, 20, 30] * 256)
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [10, 20, 30]
    gray = Image.new("L", (4, 4), 77)
    assert np.asarray(to_rgb(gray))[0, 0].tolist() == [77, 77, 77]


def test_a_rejected_legacy_frame_is_an_error_not_a_delivery(tiny_model, start_receiver, tmp_path):
    rx = start_receiver("--no-show", "--model", str(tiny_model), "--max-latent", "1024", "--out", str(tmp_path / "o"))
    tx = run_script("sender_sdvae.py", "--model", str(tiny_model), "--port", str(rx.port), "--size", "256")
    assert tx.returncode == 1 and re.search("refused the frame|refused it|may have rejected it", tx.stderr), tx.stderr
    ok = run_script("sender_sdvae.py", "--model", str(tiny_model), "--port", str(rx.port), "--size", "64")
    assert ok.returncode == 0 and "Delivery:              unconfirmed" in ok.stdout
