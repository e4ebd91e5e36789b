"""Shared fixtures: a small real AutoencoderKL on disk, and the real scripts as subprocesses."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CORES = len(os.sched_getaffinity(0))


# -- running alone under pytest-xdist ---------------------------------------------------------------
#
# The suite runs on two xdist workers (pyproject's addopts), which nearly halves CI on two cores.
# A few tests assert on time itself: a stream's latency and link use, an ack timeout, a read timeout.
# Sharing the CPU with another worker's model loads would make them measure the neighbour, not the
# product, so they are marked `exclusive` and take a readers-writer lock that every other test takes
# shared. The turnstile keeps an exclusive test from waiting forever behind a stream of shared ones.


#: Where the run's lock files live: a folder the controller makes for this run (the workers inherit
#: it through the environment) and removes at the end, so runs leave nothing behind in /tmp.
LOCK_DIR_ENV = "LATENTCOMM_TEST_LOCKS"
OWN_LOCK_DIR = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "exclusive: asserts on timing; under pytest-xdist it runs while no other test does"
    )
    if not hasattr(config, "workerinput") and LOCK_DIR_ENV not in os.environ:
        os.environ[LOCK_DIR_ENV] = config.stash[OWN_LOCK_DIR] = tempfile.mkdtemp(prefix="latentcomm-pytest-")


def pytest_unconfigure(config: pytest.Config) -> None:
    if folder := config.stash.get(OWN_LOCK_DIR, None):
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(LOCK_DIR_ENV, None)


@contextlib.contextmanager
def cpu_share(item: pytest.Item) -> Iterator[None]:
    """Hold the run's lock shared, or alone for an `exclusive` test; no-op without xdist."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:
        yield
        return
    base = Path(os.environ.get(LOCK_DIR_ENV, tempfile.gettempdir())) / f"cpu-{workerinput['testrunuid']}"
    alone = item.get_closest_marker("exclusive") is not None
    with open(f"{base}.turn", "a") as turn, open(f"{base}.lock", "a") as lock:
        fcntl.flock(turn, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(turn, fcntl.LOCK_UN)
        # Sharing the cores, each test's torch (here and in the scripts it starts, which inherit
        # the environment) gets one thread: two workers' thread pools on two cores slowed each
        # other's convolutions 2-3x. A test that runs alone gets them all, as a user would.
        threads = torch.get_num_threads()
        if alone:
            os.environ.pop("OMP_NUM_THREADS", None)
            torch.set_num_threads(CORES)
        else:
            os.environ["OMP_NUM_THREADS"] = "1"
            torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Setup, call and teardown of each test under its share of the CPU."""
    with cpu_share(item):
        return (yield)


def script_env(**extra: str) -> dict[str, str]:
    """Environment for the scripts: offline (no Hub), unbuffered, headless."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    env.update(extra)
    return env


def make_tiny_vae(path: Path, seed: int = 0) -> Path:
    """A small AutoencoderKL with the SD VAE's latent interface (4 channels, 8x down-sampling).

    Built from a config and saved with save_pretrained, so the scripts load it through the same
    from_pretrained path a user's --model takes.
    """
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16],
        mid_block_add_attention=False,
    )
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_vae(tmp_path_factory.mktemp("models") / "tiny-vae")


def run_script(name: str, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts the way a user does, from the repository root."""
    return subprocess.run(
        [PYTHON, str(REPO / name), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or script_env(),
    )


class ReceiverProcess:
    """receiver_sdvae.py running in the background on a free port, its output collected by threads."""

    def __init__(self, *args: str, env: dict | None = None, cwd: Path = REPO, argv0: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(argv0 or [PYTHON, str(REPO / "receiver_sdvae.py")]), "--port", "0", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or script_env(),
        )
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        self.stderr_text: list[str] = []
        self._listening = threading.Event()
        self.port: int | None = None
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        for line in self.proc.stdout:
            self.stdout_lines.put(line)

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self.stderr_text.append(line)
            m = re.search(r"Receiver listening on [^ ]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._listening.set()

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_text)

    def wait_listening(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"receiver did not start (rc={self.proc.poll()}):\n{self.stderr}")
        assert self.port is not None
        return self.port

    def next_json(self, timeout: float = 120) -> dict:
        """The next JSON object the receiver printed (needs --json)."""
        try:
            line = self.stdout_lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"receiver printed nothing in {timeout} s; stderr:\n{self.stderr}") from None
        return json.loads(line)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def start_receiver():
    """Factory: start receivers; every one still running at the end of the test is stopped."""
    started: list[ReceiverProcess] = []

    def start(*args: str, env: dict | None = None, cwd: Path = REPO) -> ReceiverProcess:
        r = ReceiverProcess(*args, env=env, cwd=cwd)
        started.append(r)
        r.wait_listening()
        return r

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()
