"""A spatial-channel context model for the learned codec's latent (ELIC-style, checkerboard).

The hyperprior alone predicts each latent element's mean and scale from the hyper-latent ``z``, which
the receiver has before any of ``y``. A context model also uses parts of ``y`` the receiver has
already decoded. Here, as in ELIC (He et al. 2022), the channels are split into uneven groups
decoded one after another (the channel context of Minnen & Singh 2020), and within a group the
positions in two checkerboard halves (He et al. 2021): the *anchors* first, from the hyperprior and
earlier groups, then the other half, which also sees its decoded anchor neighbours. That is
``2 * len(groups)`` parallel passes, instead of one pass per position for a serial context
(Minnen et al. 2018), so decoding stays fast.

The module only refines the hyperprior's prediction: each pass outputs a correction to the
hyper-synthesis's mean and log-scale, initialised to zero, so a fresh context model codes exactly
like the hyperprior and training can only improve on it.

The same function, :meth:`SpatialChannelContext.run`, drives the passes for the encoder, the decoder
and training; only the ``fetch`` callback differs (round the true latent, or decode symbols from the
bitstream). That is what makes sender and receiver compute the same tables: the same code, in
float64, on the same integers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from latentcomm.codecs.learned.layers import SCALE_MIN, lower_bound

#: ``fetch(group, positions, mean, scale) -> y_hat`` for one pass: ``positions`` is a (H, W) bool
#: mask of the elements this pass decides, ``mean``/``scale`` the predicted parameters of the group's
#: channels (B, c, H, W). Returns the group's dequantized values (B, c, H, W), valid at ``positions``.
Fetch = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def anchor_mask(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Checkerboard (H, W) bool mask of the anchor positions ((i + j) even), decoded first."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return (i + j) % 2 == 0


class SpatialChannelContext(nn.Module):
    """Per-group networks that refine the hyperprior's (mean, scale) from decoded context.

    For group ``k`` (channels ``offsets[k]:offsets[k+1]``):
    - a 3x3 convolution over all earlier groups' decoded values (channel context; none for k = 0);
    - a 5x5 convolution over this group's decoded anchors (spatial context; zero input for the
      anchor pass itself);
    - a shared 1x1 embedding of the hyper-synthesis output;
    - 1x1 layers that merge the three into corrections of the group's mean and log-scale.
    """

    def __init__(self, M: int, groups: list[int], hyper: int = 96, width: int = 128) -> None:
        super().__init__()
        if sum(groups) != M or min(groups) <= 0:
            raise ValueError(f"context groups {groups} must be positive and add up to M={M}")
        self.groups = list(groups)
        self.offsets = [0]
        for c in groups:
            self.offsets.append(self.offsets[-1] + c)
        self.hyper = nn.Conv2d(2 * M, hyper, 1)
        self.channel = nn.ModuleList()
        self.spatial = nn.ModuleList()
        self.merge = nn.ModuleList()
        for k, c in enumerate(groups):
            prev = self.offsets[k]
            ch = min(width // 2, max(16, prev)) if k else 0
            self.channel.append(nn.Conv2d(prev, ch, 3, padding=1) if k else nn.Identity())
            sp = min(width // 2, 2 * c)
            self.spatial.append(nn.Conv2d(c, sp, 5, padding=2))
            last = nn.Conv2d(width, 2 * c, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.merge.append(
                nn.Sequential(
                    nn.Conv2d(hyper + ch + sp, width, 1),
                    nn.LeakyReLU(inplace=True),
                    nn.Conv2d(width, width, 1),
                    nn.LeakyReLU(inplace=True),
                    last,
                )
            )

    def run(self, hyper_scale: torch.Tensor, hyper_mean: torch.Tensor, fetch: Fetch) -> tuple[torch.Tensor, ...]:
        """All passes in decoding order. Returns (y_hat, mean, scale), each (B, M, H, W).

        ``hyper_scale``/``hyper_mean``: the hyper-synthesis output, split (scale first, as ``h_s``
        emits it). Scales are returned un-clamped; callers bound them as the hyperprior's are.
        """
        b, m, h, w = hyper_mean.shape
        dtype = hyper_mean.dtype
        anchors = anchor_mask(h, w, hyper_mean.device)
        others = ~anchors
        feat = F.leaky_relu(self.hyper(torch.cat([hyper_scale, hyper_mean], dim=1)))
        y_hats: list[torch.Tensor] = []
        means: list[torch.Tensor] = []
        scales: list[torch.Tensor] = []
        for k in range(len(self.groups)):
            lo, hi = self.offsets[k], self.offsets[k + 1]
            parts = [feat]
            if k:
                parts.append(F.leaky_relu(self.channel[k](torch.cat(y_hats, dim=1))))
            base_mean, base_scale = hyper_mean[:, lo:hi], hyper_scale[:, lo:hi]
            spatial = self.spatial[k]
            # Anchor pass: the spatial input is all zeros, so the convolution gives its bias.
            zero_sp = F.leaky_relu(spatial.bias.to(dtype))[None, :, None, None].expand(b, -1, h, w)
            mu_a, s_a = self._params(k, parts, zero_sp, base_mean, base_scale)
            got = fetch(k, anchors, mu_a, s_a)
            group = torch.where(anchors, got, torch.zeros((), dtype=dtype))
            sp = F.leaky_relu(spatial(group))
            mu_n, s_n = self._params(k, parts, sp, base_mean, base_scale)
            got_n = fetch(k, others, mu_n, s_n)
            y_hats.append(torch.where(anchors, group, got_n))
            means.append(torch.where(anchors, mu_a, mu_n))
            scales.append(torch.where(anchors, s_a, s_n))
        return torch.cat(y_hats, dim=1), torch.cat(means, dim=1), torch.cat(scales, dim=1)

    def _params(self, k: int, parts: list[torch.Tensor], sp: torch.Tensor, base_mean, base_scale):
        d = self.merge[k](torch.cat([*parts, sp], dim=1))
        d_mean, d_log_scale = d.chunk(2, dim=1)
        return base_mean + d_mean, lower_bound(base_scale, SCALE_MIN) * torch.exp(d_log_scale)
