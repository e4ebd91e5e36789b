"""Running the autoencoder fast and safely: encode images to latents and decode latents to images.

The model's weights stay float32; speed comes from autocast (bf16 on CPUs with AMX/AVX512-BF16,
fp16 on CUDA), channels_last memory layout and ``torch.inference_mode``. fp16 VAE decodes can
overflow (SDXL's VAE is the known case), so a non-finite fp16/bf16 result is recomputed in fp32
automatically. Large inputs switch to diffusers' tiled encode/decode to bound memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from pathlib import Path

import torch

from latentcomm.device import configure_threads, resolve_device, resolve_precision
from latentcomm.errors import ModelLoadError
from latentcomm.images import LATENT_STRIDE, crop_to, pad_to_multiple
from latentcomm.models import AUTO, LoadedModel, load_autoencoder

log = logging.getLogger(__name__)

#: Above this many pixels per image, encode/decode run tiled (diffusers' tiling): memory stays at a
#: few GB for 2048x2048 inputs, at the cost of slightly visible tile seams in flat regions.
TILING_THRESHOLD_PIXELS = 1024 * 1024
#: Side of the warm-up image: the scripts' default --size.
WARMUP_SIZE = 256


class Engine:
    """A loaded autoencoder plus the policy for running it (device, precision, tiling).

    Create it once per process: loading and the warm-up cost seconds, every image after that
    only pays for compute.
    """

    def __init__(
        self,
        model: str = AUTO,
        device: str = "auto",
        precision: str = "auto",
        warmup: bool = True,
        channels_last: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            configure_threads()
        self.loaded: LoadedModel = load_autoencoder(model, self.device)
        self.vae = self.loaded.vae
        if channels_last:
            self.vae = self.vae.to(memory_format=torch.channels_last)
        self.latent_channels = int(self.vae.config.latent_channels)
        #: Pixels per latent cell: each encoder block but the last halves the resolution.
        self.stride = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.stride != LATENT_STRIDE:
            raise ModelLoadError(
                f"{self.loaded.source} down-samples by {self.stride}, but the wire format needs "
                f"{LATENT_STRIDE} (the SD VAE's latent interface)"
            )
        self.warmup_seconds = 0.0
        if warmup:
            t0 = time.perf_counter()
            # At the default image size: oneDNN builds kernels per shape, so warming a tiny shape
            # would leave the first real image slow.
            self.decode(self.encode(torch.zeros(1, 3, WARMUP_SIZE, WARMUP_SIZE)))
            self.warmup_seconds = time.perf_counter() - t0

    @property
    def source(self) -> str:
        return self.loaded.source

    @functools.cached_property
    def model_id(self) -> str:
        """What v2 frames carry to name the model: ``<name>@<fingerprint of the weights>``.

        The name is the Hub id or the folder's name (paths differ between machines); the
        fingerprint (BLAKE2b of every parameter, 8 bytes) tells apart two models that share a name,
        such as two checkpoints of one training run.
        """
        h = hashlib.blake2b(digest_size=8)
        for name, tensor in sorted(self.vae.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        src = Path(self.source)
        name = src.name if src.is_dir() else self.source
        return f"{name}@{h.hexdigest()}"

    def _autocast(self, dtype: torch.dtype):
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _run(self, fn, x: torch.Tensor) -> torch.Tensor:
        """Run ``fn`` under the chosen precision; recompute in fp32 if the result is not finite."""
        with torch.inference_mode(), self._autocast(self.dtype):
            out = fn(x).float()
        if self.dtype != torch.float32 and not torch.isfinite(out).all():
            log.warning("non-finite output in %s; recomputing in fp32", self.dtype)
            with torch.inference_mode():
                out = fn(x.float()).float()
        return out

    def _tiled(self, pixels: int) -> bool:
        return pixels > TILING_THRESHOLD_PIXELS

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1], H and W multiples of 8 -> latents (N, C, H/8, W/8) float32."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images shaped (N, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.device, memory_format=torch.channels_last)
        pixels = images.shape[-1] * images.shape[-2]
        self.vae.use_tiling = self._tiled(pixels)
        return self._run(lambda t: self.vae.encode(t).latent_dist.mean, x).contiguous().cpu()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) -> images (N, 3, 8h, 8w) float32, clamped to [-1, 1]."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents shaped (N, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        z = latents.to(self.device, dtype=torch.float32, memory_format=torch.channels_last)
        pixels = latents.shape[-1] * latents.shape[-2] * 64
        self.vae.use_tiling = self._tiled(pixels)
        return self._run(lambda t: self.vae.decode(t).sample, z).clamp(-1.0, 1.0).contiguous().cpu()

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image (1, 3, H, W) of any size -> (latent, original (H, W)); pads to a multiple of 8."""
        padded, size = pad_to_multiple(image)
        return self.encode(padded), size

    def decode_image(self, latent: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Latent -> image, cropped back to ``size`` (the size before padding) when given."""
        out = self.decode(latent)
        return crop_to(out, size) if size else out
