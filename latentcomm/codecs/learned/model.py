"""The learned image codec: a latent trained for rate and distortion together.

Architecture: the mean-scale hyperprior of Minnen, Balle & Toderici (2018) without its slow
autoregressive context, on the transforms of Balle et al. (2018): four stride-2 5x5 convolutions with
GDN (16x down-sampling to M channels), a hyper-analysis to N channels at 1/64 resolution, a
factorized learned density for the hyper-latent ``z`` and a conditional Gaussian for the latent
``y`` whose mean and scale the hyper-synthesis predicts from ``z``. A model may add a spatial-channel
context model (``config.context_groups``, :mod:`latentcomm.codecs.learned.context`): it refines those means
and scales pass by pass from the parts of ``y`` already decoded, which key frames then use.

Rate control (one model for 0.03-1 bpp): gain vectors in the style of Cui et al. (2021, "asymmetric
gained"): the latent is multiplied channel-wise by a learned encoder gain before quantization and by
the matching inverse gain after it, one pair per training lambda. A quality between two trained
levels interpolates the log-gains, so quality is continuous and ``--target-bytes`` can search it.
The gain never enters the hyper path's inputs after quantization, so the probability model that
sender and receiver must agree on depends only on integers (``z_hat``) and the weights.

Why the probability path is computed in float64: the scale of each latent element chooses one of 64
fixed coding tables. If sender and receiver compute a scale differently in the last bit (another
CPU's kernels, bf16 against fp32), an element near a table boundary picks another table and the rest
of the bitstream decodes to garbage. In float64 such a difference is ~1e-16 relative, which makes a
boundary crossing practically impossible; the frame's checksum of the integer latent catches the
rest. The hyper-synthesis (and the context model) work at 1/16 resolution, so float64 costs little.

The model folder is diffusers-like: ``config.json`` plus ``model.safetensors``; load it with
:meth:`LearnedCodecModel.from_pretrained`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentcomm.codecs.learned.context import SpatialChannelContext
from latentcomm.codecs.learned.layers import (  # noqa: F401 (the grid's names, as the model's)
    GDN,
    SCALE_LEVELS,
    SCALE_MAX,
    SCALE_MIN,
    Y_RANGE,
    Z_RANGE,
    lower_bound,
)
from latentcomm.errors import ModelLoadError

log = logging.getLogger(__name__)

CLASS_NAME = "LearnedCodecModel"


class PostNetwork(nn.Module):
    """A small residual CNN on the synthesis transform's output: ``x + f(x, quality)``.

    Why: the synthesis ends in a transposed convolution from half resolution, so nothing nonlinear
    ever looks at the full-resolution picture, and the codec's typical errors there (ringing, soft
    edges, colour bleeding) stay. ``f`` is three 3x3 convolutions with leaky ReLUs on the picture
    folded 2x2 into 12 channels (``pixel_unshuffle``) plus one plane holding the quality's log-lambda:
    a receptive field of 14 pixels for about 22k multiply-adds per pixel at width 64. The quality
    plane matters: without it, the network learnt the low qualities' smoothing and applied it
    everywhere (held-out PSNR -1.6 dB at quality 11, +0.29 at quality 3, measured). Its last layer
    starts at zero, so a newly added post-network leaves the codec exactly as it was, and it trains
    on the frozen codec's own decoded pictures (``python -m latentcomm.training --objective postnet``).
    Picture sizes must be even, which the transforms' 64-pixel padding guarantees.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(13, width, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(width, 12, 3, 1, 1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, H, W); ``level`` (B,): :meth:`LearnedCodecModel.quality_plane` of each picture."""
        folded = F.pixel_unshuffle(x, 2)
        b, _, h, w = folded.shape
        plane = level.to(folded.dtype).reshape(-1, 1, 1, 1).expand(b, 1, h, w)
        inp = torch.cat([folded, plane], dim=1).contiguous(memory_format=torch.channels_last)
        return x + F.pixel_shuffle(self.body(inp), 2)


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


class FactorizedDensity(nn.Module):
    """The hyper-latent's learned per-channel density (Balle et al. 2018, appendix 6.1).

    A small monotone network per channel gives the cumulative logits; the probability of an integer
    is the difference of two sigmoids. Used for training likelihoods and, once, to build the coding
    tables (``probability_tables``), which then travel with the weights.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, n) -> cumulative logits (C, 1, n)."""
        for i, m in enumerate(self.matrices):
            v = torch.matmul(F.softplus(m.to(v.dtype)), v) + self.biases[i].to(v.dtype)
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i].to(v.dtype)) * torch.tanh(v)
        return v

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit interval around each value of z (B, C, H, W)."""
        b, c, h, w = z.shape
        v = z.float().permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def probability_tables(self) -> np.ndarray:
        """(C, 2*Z_RANGE+1) float64 probabilities of the integers -Z_RANGE..Z_RANGE, tails folded into the ends."""
        c = self.matrices[0].shape[0]
        edges = torch.arange(-Z_RANGE - 0.5, Z_RANGE + 1.0, 1.0, dtype=torch.float64)
        # logits_cdf casts the parameters to the input's dtype: float64 here, whatever training used.
        vv = self.logits_cdf(edges.view(1, 1, -1).expand(c, 1, -1))
        cdf = torch.sigmoid(vv[:, 0, :])
        cdf[:, 0] = 0.0
        cdf[:, -1] = 1.0
        probs = (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0.0)
        probs = probs / probs.sum(dim=1, keepdim=True)
        return probs.numpy()


def gaussian_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of [y - 0.5, y + 0.5] under N(mean, scale^2), computed on the side of the smaller tail."""
    v = (y - mean).abs()
    s = lower_bound(scale, SCALE_MIN)
    hi = 0.5 * torch.erfc((v - 0.5) / (s * math.sqrt(2)))
    lo = 0.5 * torch.erfc((v + 0.5) / (s * math.sqrt(2)))
    return hi - lo


def scale_table() -> np.ndarray:
    """The 64 scales the coding tables are built for (float64, log-spaced), shared by both sides."""
    return np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))


def scale_index(scale: torch.Tensor) -> torch.Tensor:
    """Index of the smallest table scale >= each predicted scale (CompressAI's rule: never too narrow)."""
    table = torch.from_numpy(scale_table())
    idx = torch.searchsorted(table, scale.to(torch.float64).clamp(SCALE_MIN, SCALE_MAX).contiguous())
    return idx.clamp(0, SCALE_LEVELS - 1).to(torch.int32)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


@dataclass
class LearnedCodecConfig:
    """Everything needed to rebuild the model; saved as ``config.json``."""

    N: int = 96
    M: int = 192
    #: Width of the hyper-analysis and hyper-synthesis (smaller than Minnen's to fit the 20 MB budget).
    H: int = 96
    #: The rate-distortion trade-offs the gain pairs were trained for (MSE on 0..255 pixels), lowest first.
    #: The three lowest were added at 12k steps (by extrapolating the gains, then training on) so
    #: that budgets of 0.03-0.1 bpp are trained points, not "over".
    lambdas: list[float] = field(
        default_factory=lambda: [0.00005, 0.0001, 0.0002, 0.0004, 0.0009, 0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.05]
    )
    #: The quality a sender uses when given neither --quality nor --target-bytes (lambda 0.0035).
    default_quality: float = 7.0
    #: Channel groups of the spatial-channel context model (``latentcomm.codecs.learned.context``), in
    #: decoding order; None = the hyperprior alone predicts the latent's distribution.
    context_groups: list[int] | None = None
    #: Width of the residual post-network that ends the synthesis transform (:class:`PostNetwork`);
    #: 0 = none, the synthesis ends with its last transposed convolution.
    postnet_width: int = 0
    #: Width of the context model's 1x1 merging layers.
    context_width: int = 128
    _class_name: str = CLASS_NAME

    @property
    def levels(self) -> int:
        return len(self.lambdas)


class LearnedCodecModel(nn.Module):
    """Transforms, gains and entropy models of the learned codec (no entropy coder inside)."""

    def __init__(self, config: LearnedCodecConfig | None = None) -> None:
        super().__init__()
        self.config = config or LearnedCodecConfig()
        N, M, H, L = self.config.N, self.config.M, self.config.H, self.config.levels
        self.g_a = nn.Sequential(_conv(3, N), GDN(N), _conv(N, N), GDN(N), _conv(N, N), GDN(N), _conv(N, M))
        self.g_s = nn.Sequential(
            _deconv(M, N), GDN(N, True), _deconv(N, N), GDN(N, True), _deconv(N, N), GDN(N, True), _deconv(N, 3)
        )
        #: The post-network after the synthesis (None without one): every picture goes through
        #: :meth:`picture`, which applies it.
        self.g_p = PostNetwork(self.config.postnet_width) if self.config.postnet_width else None
        self.h_a = nn.Sequential(
            _conv(M, H, 3, 1), nn.LeakyReLU(inplace=True), _conv(H, H), nn.LeakyReLU(inplace=True), _conv(H, H)
        )
        self.h_s = nn.Sequential(
            _deconv(H, H),
            nn.LeakyReLU(inplace=True),
            _deconv(H, H * 3 // 2),
            nn.LeakyReLU(inplace=True),
            _conv(H * 3 // 2, 2 * M, 3, 1),
        )
        self.z_density = FactorizedDensity(H)
        self.context = None
        if self.config.context_groups:
            self.context = SpatialChannelContext(M, self.config.context_groups, width=self.config.context_width)
        # Log-gains, initialised so that higher levels quantize finer: the MSE-optimal step size
        # shrinks like 1/sqrt(lambda).
        lam = torch.tensor(self.config.lambdas)
        init = 0.5 * torch.log(lam / lam[L // 2])
        self.log_gain = nn.Parameter(init[:, None].repeat(1, M).clone())
        self.log_inv_gain = nn.Parameter(-init[:, None].repeat(1, M).clone())

    # --- quality -> gains ------------------------------------------------------------------------

    def gains(self, quality: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder and decoder gains (B, M, 1, 1) for qualities in [1, levels] (fractional allowed)."""
        q = torch.as_tensor(quality, dtype=torch.float32, device=self.log_gain.device).reshape(-1)
        lo, t = self._between_levels(q)
        t = t[:, None]
        g = self.log_gain[lo] * (1 - t) + self.log_gain[lo + 1] * t
        gi = self.log_inv_gain[lo] * (1 - t) + self.log_inv_gain[lo + 1] * t
        return g.exp()[:, :, None, None], gi.exp()[:, :, None, None]

    def _between_levels(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower trained level index, weight of the level above) for qualities ``q``, clamped to
        [1, levels]: how a fractional quality blends two trained levels (gains and lambdas alike)."""
        pos = (q - 1).clamp(0, self.config.levels - 1)
        lo = pos.floor().long().clamp(max=self.config.levels - 2)
        return lo, pos - lo.to(pos.dtype)

    # --- training --------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, quality: torch.Tensor) -> dict[str, torch.Tensor]:
        """x in [0, 1] (B, 3, H, W), H and W multiples of 64; per-sample quality levels.

        Returns the reconstruction and the likelihoods of y and z (additive-noise proxy for the
        rate; straight-through rounding of ``y - mean`` for what the decoder sees, as at test time).
        """
        g, gi = self.gains(quality)
        return self.rd_proxy(self.g_a(x).float() * g, gi, quality=quality)

    def rd_proxy(
        self,
        y: torch.Tensor,
        gi: torch.Tensor,
        context: bool = True,
        generator: torch.Generator | None = None,
        quality: torch.Tensor | float | None = None,
    ) -> dict[str, torch.Tensor]:
        """The differentiable stand-in for coding a gained latent ``y``: training's and encode-time
        refinement's (:mod:`latentcomm.codecs.learned.refine`) shared path from ``y`` to reconstruction and likelihoods.

        ``context=False`` models hyperprior-only frames even when the model has a context model.
        ``generator`` seeds the quantization noise (refinement does, so an encode is repeatable).
        ``quality`` (what ``gi`` was taken at) conditions the post-network, where the model has one.
        """
        z = self.h_a(y).float()
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5, generator=generator)
        z_like = self.z_density.likelihood(z_noisy)
        z_hat = _ste_round(z)
        params = self.h_s(z_hat).float()
        scale, mean = params.chunk(2, dim=1)
        if self.context is not None and context:
            offsets = self.context.offsets

            def fetch(k: int, _positions, mu: torch.Tensor, _scale) -> torch.Tensor:
                return _ste_round(y[:, offsets[k] : offsets[k + 1]] - mu) + mu

            y_hat, mean, scale = self.context.run(scale, mean, fetch)
        else:
            y_hat = _ste_round(y - mean) + mean
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5, generator=generator)
        y_like = gaussian_likelihood(y_noisy, mean, scale)
        x_hat = self.picture(self.g_s(y_hat * gi), quality)
        return {"x_hat": x_hat, "y_likelihood": y_like, "z_likelihood": z_like}

    @staticmethod
    def code_length(out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bits per image (B,) of an :meth:`rd_proxy` output: the rate term of every objective."""
        bits_y = -torch.log2(out["y_likelihood"].clamp_min(1e-9)).sum(dim=(1, 2, 3))
        bits_z = -torch.log2(out["z_likelihood"].clamp_min(1e-9)).sum(dim=(1, 2, 3))
        return bits_y + bits_z

    def picture(self, x: torch.Tensor, quality: torch.Tensor | float | None) -> torch.Tensor:
        """The synthesis output ``x`` through the post-network at ``quality`` (unchanged without one)."""
        if self.g_p is None:
            return x
        if quality is None:
            raise ValueError("a model with a post-network needs the quality of the picture it refines")
        level = self.quality_plane(torch.as_tensor(quality, dtype=torch.float32).reshape(-1)).to(x.device)
        return self.g_p(x, level.expand(x.shape[0]) if level.numel() == 1 else level)

    def quality_plane(self, quality: torch.Tensor) -> torch.Tensor:
        """What the post-network is told of each quality: its log-lambda (interpolated as the gains
        are), shifted and scaled to about [-1.3, 1] over the trained levels."""
        lams = torch.log(torch.tensor(self.config.lambdas, dtype=torch.float32))
        lo, t = self._between_levels(quality.float().cpu())
        return (lams[lo] * (1 - t) + lams[lo + 1] * t + 6.0) / 3.0

    def lambda_at(self, quality: float) -> float:
        """The rate-distortion trade-off a (fractional) quality stands for: the trained lambdas
        interpolated in log space, as the gains are."""
        lams = self.config.lambdas
        lo, t = (v.item() for v in self._between_levels(torch.tensor([float(quality)], dtype=torch.float64)))
        return math.exp(math.log(lams[lo]) * (1 - t) + math.log(lams[lo + 1]) * t)

    # --- inference pieces (the entropy coder lives in latentcomm.codecs.learned.entropy) ---------------------------

    def analysis(self, x: torch.Tensor, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [0, 1] -> gained latent y (float32) and integer hyper-latent symbols."""
        g, _ = self.gains(quality)
        y = self.g_a(x).float() * g
        z = self.h_a(y)
        return y, torch.round(z.float()).clamp(-Z_RANGE, Z_RANGE).to(torch.int32)

    def entropy_parameters(self, z_symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer hyper-latent -> (means, scale indexes), computed in float64 on the CPU.

        Sender and receiver both call exactly this: it decides the coding tables, so it must not
        depend on the compute precision the transforms use.
        """
        scale, mean = self.hyper_parameters(z_symbols)
        return mean, scale_index(scale)

    def hyper_parameters(self, z_symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer hyper-latent -> the hyperprior's (scale, mean), float64 on the CPU."""
        with torch.autocast("cpu", enabled=False):
            params = self._float64("h_s")(z_symbols.to(torch.float64).cpu())
        scale, mean = params.chunk(2, dim=1)
        return scale, mean

    def contextual_symbols(self, z_symbols: torch.Tensor, fetch) -> tuple[torch.Tensor, torch.Tensor]:
        """Drive the context model's passes in float64, for the encoder and the decoder alike.

        ``fetch(group, positions, mean, scale_index) -> symbols``: given one pass's (H, W) position
        mask and the group's float64 means and int32 scale indexes (1, c, H, W), return that group's
        integer symbols (1, c, H, W), valid at ``positions``: the encoder rounds its latent, the
        decoder reads the bitstream. Returns all symbols (int32) and their means (float64).
        """
        if self.context is None:
            raise ValueError("this model has no context model")
        scale, mean = self.hyper_parameters(z_symbols)
        symbols: list[torch.Tensor] = []

        def step(k: int, positions: torch.Tensor, mu: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            sym = fetch(k, positions, mu, scale_index(s)).to(torch.int32)
            if len(symbols) == k:
                symbols.append(torch.zeros_like(sym))
            symbols[k] = torch.where(positions, sym, symbols[k])
            return sym.to(torch.float64) + mu

        with torch.autocast("cpu", enabled=False):
            _y_hat, mean, _scale = self._float64("context").run(scale, mean, step)
        return torch.cat(symbols, dim=1), mean

    def _float64(self, name: str) -> nn.Module:
        """A float64 CPU copy of a probability-path module (cached; the weights never change in use)."""
        cache = self.__dict__.setdefault("_float64_cache", {})
        if name not in cache:
            cache[name] = copy.deepcopy(getattr(self, name)).cpu().double().eval().requires_grad_(False)
        return cache[name]

    def synthesis(self, y_hat: torch.Tensor, quality: float) -> torch.Tensor:
        """Dequantized latent -> image in [0, 1] (float32, clamped)."""
        _, gi = self.gains(quality)
        dtype = next(self.g_s.parameters()).dtype
        x = self.g_s((y_hat.float() * gi.to(y_hat.device)).to(dtype))
        return self.picture(x, quality).float().clamp(0, 1)

    # --- files -----------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """SHA-256 (hex, first 16 bytes) of the weights as saved: names this exact model in frames."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:32]

    def save_pretrained(self, folder: Path, half_precision: bool = False, extra: dict | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (float16 when ``half_precision``, to fit the size budget)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        dtype = torch.float16 if half_precision else torch.float32
        state = {k: v.detach().cpu().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", **(extra or {})})

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> LearnedCodecModel:
        """Load a model folder (``config.json`` + ``model.safetensors``); ModelLoadError if it isn't one."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise ModelLoadError(f"{folder} has no config.json: not a learned codec model folder")
        try:
            raw = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read {cfg_path}: {exc}") from None
        if raw.get("_class_name") != CLASS_NAME:
            raise ModelLoadError(
                f"{cfg_path} describes a {raw.get('_class_name') or 'unknown model'}, not a {CLASS_NAME}"
            )
        try:
            config = LearnedCodecConfig(**raw)
            model = cls(config)
            weights = load_file(str(folder / "model.safetensors"))
            model.load_state_dict({k: v.float() for k, v in weights.items()})
        except (OSError, TypeError, RuntimeError, ValueError) as exc:
            detail = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise ModelLoadError(f"cannot load the learned codec from {folder}: {detail[:200]}") from None
        return model.eval().requires_grad_(False)


def hyperprior(model: LearnedCodecModel, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        scale, mean = model.h_s(torch.round(model.h_a(y))).chunk(2, dim=1)
    return scale, mean


def rounded_fetch(model: LearnedCodecModel, y: torch.Tensor):
    """The encoder's fetch for training and evaluation: round around the predicted mean."""
    offsets = model.context.offsets

    def fetch(k: int, _positions, mu: torch.Tensor, _scale) -> torch.Tensor:
        return (torch.round(y[:, offsets[k] : offsets[k + 1]] - mu) + mu).detach()

    return fetch


@torch.no_grad()
def rounded_latent(model: LearnedCodecModel, x: torch.Tensor, quality: torch.Tensor, context: bool) -> torch.Tensor:
    """What the receiver dequantizes for images ``x`` at ``quality``, before the decoder gains:
    the latent rounded around the context model's means (``context``) or the hyperprior's."""
    g, _ = model.gains(quality)
    y = model.g_a(x) * g
    scale, mean = hyperprior(model, y)
    if not context:
        return torch.round(y - mean) + mean
    y_hat, _, _ = model.context.run(scale, mean, rounded_fetch(model, y))
    return y_hat
