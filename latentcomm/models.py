"""Loading the autoencoder: one function for Hub ids and local folders, plus the default choice.

Everything that needs a model goes through ``load_autoencoder`` so that offline handling, error
messages and the embedded fallback behave the same in every script, test and benchmark.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from latentcomm.data import MODELS_ROOT
from latentcomm.errors import ModelLoadError

log = logging.getLogger(__name__)

#: The original scripts' model.
SD_VAE_ID = "stabilityai/sd-vae-ft-ema"
#: The project's own trained model, shipped in the repository (works offline).
EMBEDDED_MODEL_DIR = MODELS_ROOT / "latentcomm-kl-f8"
#: The value of ``--model`` that means "SD VAE if it can be had, else the embedded model".
AUTO = "auto"
#: How long the default-model choice may spend finding out that the Hub is unreachable.
HUB_PROBE_TIMEOUT_S = 1.5


@dataclass(frozen=True)
class LoadedModel:
    """A loaded autoencoder and where it came from (for reports and frame headers)."""

    vae: torch.nn.Module
    source: str  # the Hub id or the resolved local folder
    load_seconds: float


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to the Hub within ``timeout`` seconds (DNS included)?

    Runs in a daemon thread because a DNS lookup on a machine without network can block far longer
    than any socket timeout; we only wait ``timeout`` for it.
    """
    if _offline():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.set()
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return ok.is_set()


def _check_local_folder(path: Path) -> str | None:
    """Validate a local model folder; return the subfolder holding the VAE (or None)."""
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} is not a directory")
    for sub in (None, "vae"):
        cfg = path / sub / "config.json" if sub else path / "config.json"
        if cfg.is_file():
            try:
                cls = json.loads(cfg.read_text()).get("_class_name")
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"cannot read {cfg}: {exc}") from None
            if cls != "AutoencoderKL":
                raise ModelLoadError(f"{cfg} describes a {cls or 'unknown model'}, not an AutoencoderKL")
            return sub
    raise ModelLoadError(f"{path} has no config.json (nor vae/config.json): not a diffusers model folder")


def load_autoencoder(
    model: str = AUTO, device: torch.device | str = "cpu", torch_dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load an ``AutoencoderKL`` from a Hub id or a local diffusers folder.

    ``auto`` picks the SD VAE when it is in the local Hugging Face cache or the Hub answers within
    ~1.5 s, else the embedded model, and logs which. Weights are kept in ``torch_dtype`` (float32
    by default; faster compute comes from autocast in the engine, so the weights stay exact).
    Raises ModelLoadError with one line saying what was tried and what to do.
    """
    from diffusers import AutoencoderKL

    t0 = time.perf_counter()
    if model == AUTO:
        model = choose_default_model()
    path = Path(model).expanduser()
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1
    kwargs: dict = {"torch_dtype": torch_dtype}
    if looks_local:
        if not path.exists():
            raise ModelLoadError(
                f"model folder {path} does not exist; pass --model a diffusers folder or a Hub id like {SD_VAE_ID}"
            )
        sub = _check_local_folder(path)
        if sub:
            kwargs["subfolder"] = sub
        source = str(path.resolve())
    else:
        source = model
    try:
        vae = AutoencoderKL.from_pretrained(source, **kwargs)
    except Exception as exc:  # diffusers/huggingface_hub raise many types; all mean "can't load"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if looks_local:
            raise ModelLoadError(f"cannot load AutoencoderKL from {source}: {detail}") from None
        hint = (
            "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if _offline()
            else "it is not in the local Hugging Face cache and the Hub could not be reached"
        )
        raise ModelLoadError(
            f"cannot load {source} from the Hub ({hint}); run once with network access to cache it, "
            f"or pass --model with a local diffusers folder such as {EMBEDDED_MODEL_DIR} [{detail[:160]}]"
        ) from None
    vae = vae.to(device).eval().requires_grad_(False)
    seconds = time.perf_counter() - t0
    log.info("loaded %s on %s in %.2f s", source, device, seconds)
    return LoadedModel(vae=vae, source=source, load_seconds=seconds)


def sd_vae_cached() -> bool:
    """Is the SD VAE's config and weights file in the local Hugging Face cache?"""
    from huggingface_hub import try_to_load_from_cache

    cfg = try_to_load_from_cache(SD_VAE_ID, "config.json")
    if not isinstance(cfg, str):
        return False
    return any(
        isinstance(try_to_load_from_cache(SD_VAE_ID, f), str)
        for f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    )


def choose_default_model() -> str:
    """The model ``--model auto`` means: SD VAE if cached or downloadable, else the embedded one."""
    if sd_vae_cached():
        log.info("using %s (found in the local Hugging Face cache)", SD_VAE_ID)
        return SD_VAE_ID
    if hub_reachable():
        log.info("using %s (downloading from the Hub)", SD_VAE_ID)
        return SD_VAE_ID
    if not EMBEDDED_MODEL_DIR.is_dir():
        raise ModelLoadError(
            f"{SD_VAE_ID} is not cached, the Hub is unreachable, and the embedded model "
            f"{EMBEDDED_MODEL_DIR} is missing; pass --model with a local diffusers folder"
        )
    log.warning("%s not cached and the Hub is unreachable: using the embedded model %s", SD_VAE_ID, EMBEDDED_MODEL_DIR)
    return str(EMBEDDED_MODEL_DIR)
