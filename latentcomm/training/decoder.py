"""Fine-tune a trained codec's decoder on its own frozen bitstream.

``python -m latentcomm.training --objective decoder``.

Only the synthesis transform (``g_s``) and the decoder gains change. The analysis transform, encoder
gains, hyperprior and context model stay as they are, so every image codes to exactly the same bytes
as before. Only the picture decoded from them changes, and quality can be compared at identical bytes.

Why there is something left to gain: the transforms were trained with the hyperprior, so the decoder
only ever saw latents rounded around the hyperprior's means. The context model, trained afterwards on
the frozen transforms, rounds around its own means. Crops are therefore rounded one way or the other,
half and half (``--context-share``), because streams still code with the hyperprior alone.

The loss is ``log MSE + w * log(1 - MS-SSIM)`` per crop: the sum of two quality scores in decibels.
Each crop counts the same whatever its quality level, with no lambda to balance. ``--msssim-weight 0``
fine-tunes for PSNR alone.

Training watches the held-out photos (centre 512x512 crops): PSNR and MS-SSIM at several qualities,
decoded from context-coded latents, as the receiver decodes them.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from pytorch_msssim import ms_ssim

from latentcomm.codecs.learned.model import LearnedCodecModel, rounded_latent
from latentcomm.training.common import EVAL_QUALITIES, FrozenCodecObjective, crop_error, heldout_squares
from latentcomm.training.datasets import Crops, training_set
from latentcomm.training.loop import TrainingError


def decode(model: LearnedCodecModel, y_hat: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    _, gi = model.gains(quality)
    return model.picture(model.g_s(y_hat * gi), quality)


def quality_loss(x_hat: torch.Tensor, x: torch.Tensor, msssim_weight: float) -> tuple[torch.Tensor, dict]:
    """Mean over crops of log MSE + w * log(1 - MS-SSIM), and the batch's PSNR and MS-SSIM."""
    mse = (x_hat - x).pow(2).mean(dim=(1, 2, 3))
    loss = torch.log(mse.clamp_min(1e-10))
    stats = {"psnr": float((-10 * torch.log10(mse.detach().clamp_min(1e-10))).mean())}
    if msssim_weight:
        ms = ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0, size_average=False)
        loss = loss + msssim_weight * torch.log((1 - ms).clamp_min(1e-6))
        stats["ms_ssim"] = float(ms.detach().mean())
    return loss.mean(), stats


@torch.no_grad()
def evaluate(model: LearnedCodecModel, heldout: list[torch.Tensor]) -> dict[str, float]:
    """Held-out PSNR and MS-SSIM per quality, decoded from context-rounded latents."""
    res: dict[str, float] = {}
    for q in EVAL_QUALITIES if heldout else ():
        if q > model.config.levels:
            continue
        psnrs, msssims = [], []
        quality = torch.tensor([float(q)])
        for x in heldout:
            x_hat = decode(model, rounded_latent(model, x, quality, model.context is not None), quality).clamp(0, 1)
            psnrs.append(float(-10 * torch.log10((x_hat - x).pow(2).mean())))
            msssims.append(float(ms_ssim(x_hat, x, data_range=1.0)))
        res[f"q{q}_psnr"] = float(np.mean(psnrs))
        res[f"q{q}_ms_ssim"] = float(np.mean(msssims))
    return res


class Decoder(FrozenCodecObjective):
    """The synthesis transform and the decoder gains, on the frozen bitstream."""

    name = "decoder"
    init_help = "trained codec (with a context model) whose decoder is fine-tuned"
    defaults = dict(batch=8, lr=1e-4, decay_to=1e-5, warmup=200, ckpt_every=250, eval_every=1000)
    progress = ("psnr",)

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        p.add_argument("--crop", type=int, default=192, help="crop size in pixels (multiple of 64)")
        p.add_argument("--msssim-weight", type=float, default=1.0, help="w in log MSE + w * log(1 - MS-SSIM)")
        share = "share of steps whose crops are rounded by the context model (the others: by the hyperprior)"
        p.add_argument("--context-share", type=float, default=0.5, help=share)

    def check(self) -> None:
        if problem := crop_error(self.args.crop, self.args.msssim_weight):
            raise TrainingError(problem)
        if not 0.0 <= self.args.context_share <= 1.0:
            raise TrainingError("--context-share must be between 0 and 1")

    def build(self, base: LearnedCodecModel) -> LearnedCodecModel:
        base.requires_grad_(False).eval()
        # A post-network, where the model has one, stays as it is (``--objective postnet`` trains it);
        # the pictures this objective scores go through it.
        for p in (*base.g_s.parameters(), base.log_inv_gain):
            p.requires_grad_(True)
        return base

    def load_data(self) -> None:
        self.share = self.args.context_share if self.model.context is not None else 0.0
        try:
            self.crops = Crops(training_set(self.args), self.args.crop, self.generator)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.heldout = heldout_squares(self.args.data)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.model.g_s.parameters(), self.model.log_inv_gain]

    def loss(self) -> tuple[torch.Tensor, dict[str, Any]]:
        # Warm-up (--warmup): Adam's first steps move every weight by about the LR whatever its
        # gradient; a full-LR start was measured to cost 1.2 dB at quality 11 in 3 steps.
        n, model = self.args.batch, self.model
        x = self.crops.batch(n)
        quality = 1 + (model.config.levels - 1) * torch.rand(n, generator=self.generator)
        context = bool(torch.rand(1, generator=self.generator) < self.share)
        loss, stats = quality_loss(decode(model, rounded_latent(model, x, quality, context), quality), x,
                                   self.args.msssim_weight)  # fmt: skip
        return loss, {"loss": loss.detach(), **stats}

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.heldout)

    def trained_state(self) -> dict[str, Any]:
        return {"g_s": self.model.g_s.state_dict(), "log_inv_gain": self.model.log_inv_gain.detach().clone()}

    def load_trained(self, state: dict[str, Any]) -> None:
        self.model.g_s.load_state_dict(state["g_s"])
        with torch.no_grad():
            self.model.log_inv_gain.copy_(state["log_inv_gain"])

    def record_fields(self) -> dict[str, Any]:
        return {
            "objective": f"log MSE + {self.args.msssim_weight:g} * log(1 - MS-SSIM) on the frozen bitstream",
            "context_share": self.share,
        }
