"""The learned codec with a context model: the decoder's passes must agree with the encoder's bit for bit.

A context model makes the coding tables of most of the latent depend on symbols decoded earlier in
the same frame, so a receiver that computes one mean or scale differently decodes garbage from there
on. These tests build context models on the shipped transforms (fresh, and perturbed so they really
change the tables), encode in one process and decode in another, at both precisions, and check that
corruption is caught, that inter frames still work, and that both training objectives run.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from latentcomm.codecs import LEARNED_MODEL_DIR, LearnedCodec
from latentcomm.codecs.learned.model import LearnedCodecConfig, LearnedCodecModel
from latentcomm.errors import RemoteProtocolError
from latentcomm.images import pil_to_tensor
from tests.conftest import PYTHON, REPO, script_env
from tests.test_learned_codec import ENCODE_SCRIPT, decode_frame, encode_frame, small_photo

GROUPS = [16, 16, 32, 64, 64]


def hyperprior_state() -> tuple[dict, dict]:
    """The shipped transforms and hyperprior, without the shipped context model: (config, weights)."""
    base = LearnedCodecModel.from_pretrained(LEARNED_MODEL_DIR)
    config = {**asdict(base.config), "context_groups": None}
    return config, {k: v for k, v in base.state_dict().items() if not k.startswith("context.")}


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    """The shipped codec with the hyperprior alone."""
    folder = tmp_path_factory.mktemp("plain") / "lic-plain"
    config, weights = hyperprior_state()
    model = LearnedCodecModel(LearnedCodecConfig(**config))
    model.load_state_dict(weights)
    model.save_pretrained(folder, half_precision=True)
    return folder


def with_context(folder, perturb: float) -> LearnedCodecModel:
    """The shipped transforms plus a new context model: fresh (``perturb=0``: codes like the
    hyperprior), or with random last layers, so its means and scales differ from the hyperprior's
    everywhere."""
    config, weights = hyperprior_state()
    torch.manual_seed(3)
    model = LearnedCodecModel(LearnedCodecConfig(**{**config, "context_groups": GROUPS, "context_width": 32}))
    model.load_state_dict(weights, strict=False)
    if perturb:
        with torch.no_grad():
            for merge in model.context.merge:
                merge[-1].weight.normal_(0, perturb)
    model.save_pretrained(folder, half_precision=True)
    return model


@pytest.fixture(scope="module")
def ctx_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctx") / "lic-ctx"
    with_context(folder, 0.05)
    return folder


@pytest.fixture(scope="module")
def ctx_codec(ctx_dir) -> LearnedCodec:
    return LearnedCodec(ctx_dir, "cpu", "fp32")


def test_a_fresh_context_model_codes_exactly_like_the_hyperprior(plain_dir, tmp_path):
    """Its last layers start at zero: the same symbols with the same tables, in another order (pass
    by pass), so the same picture from as many bytes, give or take the coder's last word."""
    with_context(tmp_path / "fresh", 0.0)
    img = small_photo((200, 136))
    plain_codec, fresh_codec = LearnedCodec(plain_dir, "cpu", "fp32"), LearnedCodec(tmp_path / "fresh", "cpu", "fp32")
    plain = encode_frame(plain_codec, img, quality=4)
    fresh = encode_frame(fresh_codec, img, quality=4)
    assert fresh.payload != plain.payload and abs(len(fresh.payload) - len(plain.payload)) <= 8
    _, z1, y1, _ = plain_codec.decode_symbols(plain.shape, plain.payload, plain.image_size)
    _, z2, y2, _ = fresh_codec.decode_symbols(fresh.shape, fresh.payload, fresh.image_size)
    assert np.array_equal(z1, z2) and np.array_equal(y1, y2)
    assert np.array_equal(decode_frame(plain_codec, plain), decode_frame(fresh_codec, fresh))


@pytest.mark.parametrize("encode_precision", ["fp32", "bf16"])
def test_context_frames_encoded_in_one_process_decode_exactly_in_another(
    ctx_dir, ctx_codec, plain_dir, tmp_path, encode_precision
):
    img = small_photo((200, 136))
    img.save(tmp_path / "in.png")
    subprocess.run(
        [PYTHON, "-c", ENCODE_SCRIPT, str(ctx_dir), encode_precision, str(tmp_path / "in.png"), "5.5",
         str(tmp_path / "bits")],
        cwd=REPO, check=True, env=script_env(), timeout=300,
    )  # fmt: skip
    payload = (tmp_path / "bits").read_bytes()
    local = ctx_codec.encode(pil_to_tensor(img), quality=5.5)
    decoded = []
    for c in (ctx_codec, LearnedCodec(ctx_dir, "cpu", "bf16")):
        decoded.append(c.decode_symbols(local.shape, payload, (136, 200))[:3])  # raises on a checksum mismatch
    (q1, z1, y1), (q2, z2, y2) = decoded
    assert q1 == q2 == 5.5 and np.array_equal(z1, z2) and np.array_equal(y1, y2)
    if encode_precision == "fp32":  # the same analysis here and there: the very same bytes
        assert payload == local.payload
    # The context model really changed the coding: the hyperprior alone codes other bytes.
    plain = LearnedCodec(plain_dir, "cpu", "fp32").encode(pil_to_tensor(img), quality=5.5)
    assert plain.payload != local.payload
    # What the sender keeps as its reference is exactly what the receiver reconstructs.
    f = encode_frame(ctx_codec, img, quality=5.5)
    picture = decode_frame(LearnedCodec(ctx_dir, "cpu", "fp32"), f)
    assert np.array_equal(picture, decode_frame(ctx_codec, f))


def test_a_flipped_bit_in_a_context_frame_is_caught_by_the_checksum(ctx_codec):
    f = encode_frame(ctx_codec, small_photo((200, 136)), quality=6)
    bad = bytearray(f.payload)
    bad[len(bad) // 2] ^= 0x10
    with pytest.raises(RemoteProtocolError, match="checksum"):
        ctx_codec.decode(f.encoding, f.compression, f.shape, bytes(bad), f.params, f.image_size)


def test_inter_frames_and_byte_budgets_work_with_a_context_model(ctx_dir, ctx_codec):
    """Key frames use the context model; inter frames code changed blocks with the hyperprior."""
    img = small_photo((200, 136))
    x = pil_to_tensor(img)
    key = ctx_codec.encode(x, quality=6)
    moved = x.clone()
    moved[:, :, :32, :48] = -moved[:, :, :32, :48]
    inter = ctx_codec.encode(moved, quality=6, reference=key.facts["reference"])
    assert inter.facts["frame_type"] == "inter" and len(inter.payload) < len(key.payload)
    rx = LearnedCodec(ctx_dir, "cpu", "fp32")
    rx.decode(key.encoding, key.compression, key.shape, key.payload, key.params, (136, 200))
    out = rx.decode(inter.encoding, inter.compression, inter.shape, inter.payload, inter.params, (136, 200))
    assert out.shape == (1, 3, 136, 200)
    fit = ctx_codec.encode(x, target_bytes=len(key.payload) // 2)
    assert fit.facts["fits_target"] and len(fit.payload) <= len(key.payload) // 2


def test_training_with_a_context_model_reaches_every_part():
    """Joint training (``--objective codec --context-groups``): the rate's gradient reaches the
    context model and the analysis transform through it."""
    model = LearnedCodecModel(LearnedCodecConfig(N=16, M=24, H=16, context_groups=[8, 16], context_width=16))
    out = model(torch.rand(2, 3, 64, 64), torch.tensor([1.0, 5.0]))
    bits = -torch.log2(out["y_likelihood"]).sum() + out["x_hat"].square().mean()
    bits.backward()
    assert model.context.merge[1][-1].weight.grad.abs().sum() > 0
    assert model.g_a[0].weight.grad.abs().sum() > 0


def objective_command(tmp_path, objective: str, *flags: str) -> list[str]:
    """``python -m latentcomm.training --objective <objective>`` on two small photos, in ``tmp_path``:
    run folder ``run``, export ``export``, batches of 2, no held-out evaluation."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        small_photo((448, 448)).rotate(90 * i).save(photos / f"{i:03d}.png")
    return [
        PYTHON, "-m", "latentcomm.training", "--objective", objective, "--data", str(photos), "--extra-data",
        str(tmp_path / "none"), "--run-dir", str(tmp_path / "run"), "--export", str(tmp_path / "export"),
        "--batch", "2", "--eval-every", "0", *flags,
    ]  # fmt: skip


def train(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=script_env(), timeout=300)


def refused(command: list[str], message: str, capsys) -> None:
    """The flags of ``command`` exit 2 with one line naming ``message``. Run in-process (train.main is
    what ``python -m latentcomm.training`` runs): flag checks come before any model is loaded."""
    from latentcomm.training import main as train_main

    assert command[:3] == [PYTHON, "-m", "latentcomm.training"]
    assert train_main(command[3:]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def continued_records(tmp_path: Path, base: list[str], record: str):
    """Continue a 3-step run from its export, twice: first resuming the run with that export as
    --init-from (4 steps in all), then as a new run from the result (1 step more). Yields each
    export's ``record`` (context/decoder) with the step count it must hold: each step counted once."""
    for run, init, out, steps, total in (("run", "export", "ex2", 4, 4), ("run2", "ex2", "ex3", 1, 5)):
        more = [*base, "--run-dir", str(tmp_path / run), "--init-from", str(tmp_path / init)]
        more += ["--export", str(tmp_path / out), "--steps", str(steps)]
        r = train(more)
        assert r.returncode == 0, r.stderr
        yield json.loads((tmp_path / out / "training_state.json").read_text())[record], total


def test_context_objective_trains_resumes_and_exports_a_codec_that_round_trips(tmp_path, capsys):
    base = objective_command(tmp_path, "context", "--crop", "16", "--width", "16")
    r = train([*base, "--steps", "2"])
    assert r.returncode == 0, r.stderr
    r = train([*base, "--steps", "3"])
    assert r.returncode == 0 and "resumed from" in r.stderr and "at step 2" in r.stderr, r.stderr
    state = json.loads((tmp_path / "export" / "training_state.json").read_text())
    assert state["context"]["steps"] == 3 and state["context"]["groups"] == GROUPS
    assert state["step"] == json.loads((LEARNED_MODEL_DIR / "training_state.json").read_text())["step"]
    c = LearnedCodec(tmp_path / "export", "cpu", "fp32")
    f = encode_frame(c, small_photo((96, 80)), quality=3)
    assert decode_frame(LearnedCodec(tmp_path / "export", "cpu", "fp32"), f).shape == (80, 96, 3)
    # Its export shipped and trained on (the run resumed with it as --init-from), then continued in a
    # new run: each step counted once, and the transforms it was trained on named throughout.
    origin = state["context"]["base"]
    for ctx, total in continued_records(tmp_path, base, "context"):
        assert ctx["steps"] == total and ctx["base"] == origin
    for flag, message in ((["--groups", "16,16"], "add up to"), (["--crop", "10"], "multiple of 4")):
        refused([*base, *flag], message, capsys)


def test_streams_key_frames_skip_the_context_model_and_a_model_without_one_refuses_it(ctx_codec, plain_dir):
    """``context=False`` (what the stream sender asks for) codes a version-1 key frame that any model
    with the same transforms decodes; a context-coded one (version 3, or 4 with a post-filter) needs
    the context model."""
    img = small_photo((200, 136))
    fast = encode_frame(ctx_codec, img, quality=6, context=False)
    full = encode_frame(ctx_codec, img, quality=6)
    assert fast.payload[0] == 1 and full.payload[0] == 3
    plain = LearnedCodec(plain_dir, "cpu", "fp32")
    assert np.array_equal(decode_frame(plain, fast), decode_frame(ctx_codec, fast))
    with pytest.raises(RemoteProtocolError, match="needs a model with a context model"):
        plain.decode_symbols(full.shape, full.payload, full.image_size)
    # A post-filtered frame (version 4) is a context-coded one too: refused the same way.
    filtered = encode_frame(LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32"), small_photo((320, 256)), quality=11)
    assert filtered.payload[0] == 4
    with pytest.raises(RemoteProtocolError, match="needs a model with a context model"):
        plain.decode_symbols(filtered.shape, filtered.payload, filtered.image_size)


def test_decoder_objective_keeps_every_byte_and_changes_only_the_picture(tmp_path, capsys):
    """``--objective decoder`` fine-tunes the synthesis on the frozen bitstream: a photo codes to the
    same payload with the exported model as with the shipped one, and decodes to another picture;
    runs resume, and a run continued from its own export counts each step once."""
    base = objective_command(tmp_path, "decoder", "--crop", "192", "--warmup", "1", "--lr", "1e-3")
    r = train([*base, "--steps", "2"])
    assert r.returncode == 0, r.stderr
    r = train([*base, "--steps", "3"])
    assert r.returncode == 0 and "resumed from" in r.stderr and "at step 2" in r.stderr, r.stderr
    state = json.loads((tmp_path / "export" / "training_state.json").read_text())
    shipped_state = json.loads((LEARNED_MODEL_DIR / "training_state.json").read_text())
    assert state["decoder"]["steps"] == 3 and state["context"] == shipped_state["context"]
    shipped, tuned = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32"), LearnedCodec(tmp_path / "export", "cpu", "fp32")
    assert state["decoder"]["base"] == shipped.model_id != tuned.model_id
    img = small_photo((200, 136))
    for context in (True, False):  # the post-filter is fitted to the decoder's picture: left out here
        a = encode_frame(shipped, img, quality=4, context=context, postfilter=False)
        b = encode_frame(tuned, img, quality=4, context=context, postfilter=False)
        assert a.payload == b.payload
        assert not np.array_equal(decode_frame(shipped, a), decode_frame(tuned, b))
    # Shipped and trained on (resumed with its own export as --init-from), then continued anew.
    for dec, total in continued_records(tmp_path, base, "decoder"):
        assert dec["steps"] == total and dec["base"] == state["decoder"]["base"]
    for flag, message in ((["--crop", "128"], "MS-SSIM needs"), (["--context-share", "2"], "between 0 and 1")):
        refused([*base, *flag], message, capsys)
