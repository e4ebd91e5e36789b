"""Train the embedded autoencoder: ``python -m latentcomm.training``.

The product needs real weights that work offline, with the SD VAE's latent interface (4 channels,
8x down-sampling, input in [-1, 1]) so every code path and the legacy wire header work unchanged.
This trains a small diffusers ``AutoencoderKL`` on random crops of the training photos.

Design choices (why):
- The decoder is fed ``latent_dist.mean`` plus uniform noise of one int8 step: that is what goes
  over the wire, so the model learns to be robust to float16 and 8-bit rounding. A range penalty
  keeps the latent inside [-1, 1], which is exactly what the legacy int8 frame (flag 0) can carry.
- A tiny KL term (1e-6) is kept for diffusers compatibility; it is too small to shape the posterior
  (its std stays near the prior's 1.0, so ``sample()`` is far noisier than the mean): use the mean.
- EMA weights are exported, so the model is good whenever training is stopped.
- Checkpoints are written atomically and include optimizer, EMA and RNG states: ``--resume``
  continues bit-for-bit where it left off. ``--init-from`` instead starts a new schedule from
  trained weights (a second training phase with its own learning rate and loss weights), and
  ``--decoder-only`` makes that phase a decoder fine-tune, as Stability AI did for sd-vae-ft-mse:
  the latent, and so everything about the wire, stays exactly as it was.
- The encoder and decoder are compiled (``torch.compile``) and run channels-last: measured on this
  2-core CPU, a step of 16 128x128 crops takes 2.1 s instead of 3.5-4 s, for a one-off 40-60 s
  compile.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from latentcomm import data
from latentcomm.device import resolve_device, resolve_precision
from latentcomm.errors import ModelLoadError
from latentcomm.images import center_crop_square, load_image, pil_to_tensor
from latentcomm.models import load_autoencoder
from latentcomm.training.datasets import CropSampler
from latentcomm.training.loop import Objective, TrainingError, update_ema, write_model_folder

log = logging.getLogger(__name__)


#: Architecture of the shipped model (see :func:`embedded_model_config`).
DEFAULT_CHANNELS = (64, 128, 128, 128)
DEFAULT_LAYERS_PER_BLOCK = 1


def embedded_model_config(
    channels: tuple[int, ...] = DEFAULT_CHANNELS, layers_per_block: int = DEFAULT_LAYERS_PER_BLOCK
) -> dict:
    """The architecture of the embedded model (a plain diffusers AutoencoderKL config).

    Four blocks (8x down-sampling), 64 channels at full resolution, one resnet layer per encoder
    block and no mid-block attention. Measured on 2 CPU cores, this trains to a better held-out PSNR
    per hour than a deeper model with cheaper full-resolution stages (32/64/128/192, two layers per
    block: 19.4 dB after 1.8 h, flat from the first hour), because the full-resolution width is
    what carries fine detail back out of a 4-channel latent. 4.8M parameters, 9.7 MB of float16.
    """
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        block_out_channels=list(channels),
        layers_per_block=layers_per_block,
        latent_channels=4,
        norm_num_groups=32,
        act_fn="silu",
        sample_size=256,
        scaling_factor=1.0,
        mid_block_add_attention=False,
    )


def training_loss(
    model,
    x: torch.Tensor,
    kl_weight: float,
    range_weight: float,
    l1_weight: float = 1.0,
    mse_weight: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """L1 + MSE reconstruction from the (noised) mean latent, a tiny KL, and a [-1, 1] range penalty.

    L1 gives strong gradients early, when errors are large; PSNR is an MSE measure, so a later
    phase can shift the weight to MSE (``--l1-weight``/``--mse-weight``).
    """
    posterior = model.encode(x).latent_dist
    z = posterior.mean
    noise = (torch.rand_like(z) - 0.5) * (2.0 / 127.0)
    recon = model.decode(z + noise).sample.float()
    l1 = (recon - x).abs().mean()
    mse = F.mse_loss(recon, x)
    kl = posterior.kl().mean() / z[0].numel()
    out_of_range = F.relu(z.float().abs() - 0.95).pow(2).mean()
    loss = l1_weight * l1 + mse_weight * mse + kl_weight * kl + range_weight * out_of_range
    psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
    return loss, {
        "loss": loss.item(),
        "l1": l1.item(),
        "mse": mse.item(),
        "psnr": psnr,
        "kl": kl.item(),
        "zmax": z.detach().abs().max().item(),
    }


@torch.inference_mode()
def evaluate(model, images: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> float:
    """Mean PSNR (dB) over held-out images, computed on 8-bit pixels as a user would see them."""
    psnrs = []
    for x in images:
        x = x.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            y = model.decode(model.encode(x).latent_dist.mean).sample.float()
        a = ((x.clamp(-1, 1) + 1) * 127.5).round()
        b = ((y.clamp(-1, 1) + 1) * 127.5).round()
        mse = (a - b).pow(2).mean().item()
        psnrs.append(10 * math.log10(255.0**2 / max(mse, 1e-10)))
    return float(np.mean(psnrs))


def export(ema, out_dir: Path, meta: dict) -> None:
    """Save the EMA model as a diffusers folder with float16 safetensors (small enough to commit)."""
    write_model_folder(
        out_dir, meta, lambda tmp: copy.deepcopy(ema).to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    )


def initial_weights(path: Path) -> dict[str, torch.Tensor]:
    """Float32 weights to start a new training phase from: a run's ``last.pt`` (its EMA weights)
    or a diffusers model folder (e.g. the shipped model)."""
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=False)
        weights = state["ema"] if isinstance(state, dict) and "ema" in state else state
    else:
        weights = load_autoencoder(str(path)).vae.state_dict()
    return {k: v.float() for k, v in weights.items()}


class Reconstruction(Objective):
    """The embedded AutoencoderKL, for reconstruction through the int8-rounded mean latent."""

    name = "reconstruction"
    schedule = "steps"
    defaults = dict(
        run_dir=data.REPO_ROOT / "runs" / "embedded",
        export=data.REPO_ROOT / "models" / "latentcomm-kl-f8",
        steps=2400,
        batch=16,
        lr=5e-4,
        warmup=100,
        ckpt_every=100,
        eval_every=200,
    )
    clip_grad_norm = 1.0
    progress = ("psnr", "loss")

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data", type=Path, default=data.PHOTOS_DIR, help="folder of training photos (held-out ones are skipped)"
        )
        p.add_argument(
            "--channels",
            type=lambda v: tuple(int(c) for c in v.split(",")),
            default=DEFAULT_CHANNELS,
            help="block_out_channels, comma-separated; 4 blocks give the SD VAE's 8x down-sampling",
        )
        p.add_argument("--layers-per-block", type=int, default=DEFAULT_LAYERS_PER_BLOCK, help="resnet layers per block")
        p.add_argument("--crop", type=int, default=128, help="crop size in pixels (multiple of 8)")
        p.add_argument("--l1-weight", type=float, default=1.0, help="weight of the L1 reconstruction term")
        p.add_argument("--mse-weight", type=float, default=1.0, help="weight of the MSE reconstruction term")
        p.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL term")
        p.add_argument("--range-weight", type=float, default=1.0, help="weight of the penalty on |latent| > 0.95")
        p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights")
        p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
        p.add_argument("--precision", default="auto", help="auto|fp32|bf16|fp16 autocast for the forward pass")
        p.add_argument(
            "--compile",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="torch.compile the encoder and decoder (about 1.8x faster steps on CPU after a ~1 min compile)",
        )
        p.add_argument(
            "--decoder-only",
            action="store_true",
            help="freeze the encoder (and so the latent) and train only the decoder: a fine-tuning phase "
            "that cannot change what goes over the wire",
        )
        p.add_argument(
            "--init-from",
            type=Path,
            default=None,
            help="start a new schedule from these weights (a run's last.pt or a diffusers model folder); "
            "ignored when run-dir/last.pt is resumed",
        )

    @property
    def arch(self) -> str:
        return f"--channels {','.join(map(str, self.args.channels))} --layers-per-block {self.args.layers_per_block}"

    def setup(self) -> None:
        from diffusers import AutoencoderKL

        args = self.args
        self.device = resolve_device(args.device)
        self.dtype = resolve_precision(args.precision, self.device)
        self.generator = torch.Generator().manual_seed(args.seed)
        paths = data.training_photos(args.data)
        if not paths:
            raise TrainingError(f"no training photos in {args.data}")
        self.sampler = CropSampler(paths, args.crop, self.generator)
        self.heldout = [pil_to_tensor(center_crop_square(load_image(p), 256)) for p in data.heldout_photos(args.data)]
        config = embedded_model_config(args.channels, args.layers_per_block)
        self.model = AutoencoderKL(**config).to(self.device).to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if args.decoder_only:
            self.model.encoder.requires_grad_(False)
            self.model.quant_conv.requires_grad_(False)
        log.info("%d training photos", len(paths))

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.args.lr, betas=(0.9, 0.99), weight_decay=0.0)

    def start(self) -> tuple[int, float]:
        source = self.args.init_from
        if source is None:
            return 0, 0.0
        if not source.exists():
            raise TrainingError(f"--init-from {source} does not exist")
        try:
            weights = initial_weights(source)
        except (ModelLoadError, RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError) as exc:
            first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise TrainingError(f"--init-from {source} can't be read: {first_line}") from None
        try:
            self.model.load_state_dict(weights)
        except RuntimeError:
            raise TrainingError(f"--init-from {source} holds another architecture than {self.arch}") from None
        self.ema.load_state_dict(self.model.state_dict())
        log.info("initialised from %s", source)
        return 0, 0.0

    def begin(self) -> None:
        if self.args.compile and self.device.type in ("cpu", "cuda"):
            # In place, so parameter names (checkpoints, exports) stay those of the plain model.
            self.model.encoder.compile()
            self.model.decoder.compile()
        self.model.train()
        self.ema_pair = (list(self.ema.parameters()), list(self.model.parameters()))

    def loss(self) -> tuple[torch.Tensor, dict[str, Any]]:
        a = self.args
        x = self.sampler.batch(a.batch).to(self.device).contiguous(memory_format=torch.channels_last)
        return training_loss(self.model, x, a.kl_weight, a.range_weight, a.l1_weight, a.mse_weight)

    def after_step(self, step: int) -> None:
        update_ema(*self.ema_pair, step, self.args.ema)

    def evaluate(self) -> dict[str, float]:
        if not self.heldout:
            return {}
        return {"heldout_psnr_256": evaluate(self.ema, self.heldout, self.dtype, self.device)}

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "args": {k: str(v) for k, v in vars(self.args).items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("args", {}).get("decoder_only", str(self.args.decoder_only)) != str(self.args.decoder_only):
            raise TrainingError(
                f"{self.args.run_dir / 'last.pt'} was trained {'without' if self.args.decoder_only else 'with'} "
                "--decoder-only; resume it the same way or pass a new --run-dir"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise TrainingError(
                f"{self.args.run_dir / 'last.pt'} holds another architecture than {self.arch}; "
                "pass a new --run-dir or --no-resume"
            ) from None
        self.ema.load_state_dict(state["ema"])

    def export(self, step: int, seconds: float, evals: dict[str, float] | None) -> None:
        a = self.args
        export(
            self.ema,
            a.export,
            {
                **self.run_record(step, seconds),
                "crop": a.crop,
                "loss_weights": {"l1": a.l1_weight, "mse": a.mse_weight, "range": a.range_weight},
                "init_from": str(a.init_from) if a.init_from else None,
                "decoder_only": a.decoder_only,
                **({"heldout": evals} if evals else {}),
            },
        )
