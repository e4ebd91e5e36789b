"""The learned codec's post-filter: fitted by the sender, sent in the frame, applied exactly.

What must hold: the filter is integer arithmetic (the identity filter changes nothing, any filter is
a pure function of the decoded pixels); on a held-out photo at a floor budget it is sent, fits the
budget and beats the unfiltered frame at the same budget; a flipped coefficient is caught by the
checksum; a model without a context model refuses the frame by name; frames of any version survive
fuzzing with the protocol's own error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage.metrics import mean_squared_error

from latentcomm.codecs.learned import postfilter
from latentcomm.codecs.learned.codec import FILTERED_VERSION, LEARNED_HEADER, LEARNED_MODEL_DIR, LearnedCodec
from latentcomm.data import heldout_photos
from latentcomm.errors import RemoteProtocolError
from latentcomm.images import load_image
from latentcomm.metrics import psnr
from latentcomm.wire import v2
from latentcomm.wire.encodings import COMP_NONE, ENC_LEARNED
from tests.test_learned_codec import decode_frame, encode_frame, small_photo

needs_photos = pytest.mark.skipif(not heldout_photos(), reason="../shared/data/photos is not there")


@pytest.fixture(scope="module")
def codec() -> LearnedCodec:
    return LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")


def identity() -> np.ndarray:
    c = np.zeros((3, postfilter.COEFFICIENTS), np.int16)
    for k in range(3):
        c[k, k * len(postfilter.TAPS)] = postfilter.ONE  # each channel's own centre tap
    return c


def test_the_identity_filter_changes_nothing_and_a_fitted_one_undoes_a_blur():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    assert np.array_equal(postfilter.apply(img, identity()), img)
    assert np.array_equal(postfilter.unpack(postfilter.pack(identity())), identity())
    # A smooth picture, blurred and darkened: the fitted filter takes it most of the way back.
    yy, xx = np.mgrid[0:64, 0:96]
    sharp = np.stack([128 + 100 * np.sin(xx / 3.0), 128 + 100 * np.cos(yy / 4.0), (xx + yy) % 256], -1)
    sharp = sharp.astype(np.uint8)
    t = torch.from_numpy(sharp.astype(np.float64)).permute(2, 0, 1)[None]
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(t, (1, 1, 1, 1), mode="replicate"), 3, 1)
    soft = (blurred[0].permute(1, 2, 0).numpy() * 0.9).round().astype(np.uint8)
    fixed = postfilter.apply(soft, postfilter.fit(sharp, soft))
    assert mean_squared_error(sharp, fixed) < 0.5 * mean_squared_error(sharp, soft)


@needs_photos
def test_a_held_out_photo_at_a_floor_budget_sends_the_filter_and_gains(codec):
    """0.1 bpp on photo 014: the filtered frame fits the same budget (the latent gives up the
    filter's bytes) and its picture is closer to the original than the unfiltered frame's."""
    photo = next(p for p in heldout_photos() if p.name == "014.png")
    img = load_image(photo)
    budget = int(0.1 * img.width * img.height / 8)
    plain = encode_frame(codec, img, target_bytes=budget, postfilter=False)
    filtered = encode_frame(codec, img, target_bytes=budget)
    assert plain.payload[0] == 3 and filtered.payload[0] == FILTERED_VERSION
    assert len(plain.payload) <= budget and len(filtered.payload) <= budget
    original = np.asarray(img)
    gain = psnr(original, decode_frame(codec, filtered)) - psnr(original, decode_frame(codec, plain))
    assert gain > 0.03, gain
    # A fresh receiver decodes the same pixels: the filter is a pure function of the frame.
    again = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")
    assert np.array_equal(decode_frame(again, filtered), decode_frame(codec, filtered))


def filtered_frame(codec: LearnedCodec) -> v2.ImageFrame:
    f = encode_frame(codec, small_photo((320, 256)), quality=11)
    assert f.payload[0] == FILTERED_VERSION, "the filter should pay for itself at quality 11 on this picture"
    return f


def test_a_flipped_coefficient_is_caught_by_the_checksum(codec):
    f = filtered_frame(codec)
    for pos in (LEARNED_HEADER.size, LEARNED_HEADER.size + postfilter.FILTER_BYTES - 1):
        bad = bytearray(f.payload)
        bad[pos] ^= 0x01
        with pytest.raises(RemoteProtocolError, match="checksum"):
            decode_frame(codec, v2.ImageFrame(f.seq, f.model, f.encoding, f.compression, f.shape, f.image_size, bad))
    with pytest.raises(RemoteProtocolError, match="shorter than its post-filter"):
        codec.decode(f.encoding, f.compression, f.shape, f.payload[: LEARNED_HEADER.size + 10], (), f.image_size)


def test_no_postfilter_and_streams_send_plain_frames(codec):
    img = small_photo((320, 256))
    assert encode_frame(codec, img, quality=11, postfilter=False).payload[0] == 3
    assert encode_frame(codec, img, quality=11, context=False).payload[0] == 1
    off = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32", postfilter=False)
    assert encode_frame(off, img, quality=11).payload[0] == 3
    # Where the filter's 96 bytes cost more than it saves (a small picture at a low quality), the
    # sender leaves it out by itself.
    assert encode_frame(codec, small_photo(), quality=3).payload[0] == 3


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), h=st.integers(1, 150), w=st.integers(1, 150), q=st.integers(0, 12000))
def test_fuzzed_filtered_bitstreams_raise_only_the_protocol_error(codec, data, h, w, q):
    shape = (codec.model.config.M, 4 * -(-h // 64), 4 * -(-w // 64))
    payload = LEARNED_HEADER.pack(FILTERED_VERSION, q, 0) + data
    try:
        out = codec.decode(ENC_LEARNED, COMP_NONE, shape, payload, (), (h, w))
    except RemoteProtocolError:
        return
    assert out.shape == (1, 3, h, w) and torch.isfinite(out).all()
