"""A video-only install: the core of pyproject.toml, without torch, diffusers, scipy or matplotlib.

A fresh virtual environment sees only the distributions the core's requirements pull in (resolved
from pyproject.toml's ``dependencies`` through their metadata and linked from this interpreter's
site-packages, so nothing is downloaded); the checkout's scripts run in it. A live H.264 stream,
sealed, goes from a sender to a receiver, and what needs an extra says which one in one line.
``requirements.txt``, the README's command for the full product, is checked to be the core plus
every extra.
"""

from __future__ import annotations

import re
import subprocess
import venv
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from tests.conftest import REPO, ReceiverProcess, script_env
from tests.videos import make_video

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: What a video-only device must never import (the issue's list, and what they pull in).
APPLE = REPO / "temp" / "apple.jpeg"
HEAVY = ("torch", "diffusers", "scipy", "matplotlib", "skimage", "transformers", "accelerate")


def _closure(requirements: list[str]) -> dict[str, object]:
    """The installed distributions these requirements need, transitively (markers evaluated here)."""
    found: dict[str, object] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in found:
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} (a core requirement) is not installed here")
        found[key] = dist
        todo.extend(Requirement(r) for r in dist.requires or [])
    return found


@pytest.fixture(scope="module")
def core_python(tmp_path_factory) -> Path:
    """A venv's python whose site-packages hold the core's distributions only (links to this one's)."""
    root = tmp_path_factory.mktemp("core")
    lib = root / "core-lib"
    lib.mkdir()
    for dist in _closure(PYPROJECT["project"]["dependencies"]).values():
        for f in dist.files or []:
            top = f.parts[0]
            if top.startswith("..") or top == "__pycache__":
                continue
            source = Path(dist.locate_file(top))
            if source.exists() and not (lib / top).exists():
                (lib / top).symlink_to(source)
    env_dir = root / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (Path(own) / "core.pth").write_text(f"{lib}\n")
    return python


def core_env() -> dict[str, str]:
    env = script_env()
    env.pop("PYTHONPATH", None)
    return env


def test_requirements_txt_is_the_core_plus_every_extra():
    def names(reqs):
        return {re.sub(r"[-_.]+", "-", Requirement(r).name).lower(): str(Requirement(r).specifier) for r in reqs}

    project = PYPROJECT["project"]
    listed = names(line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))  # fmt: skip
    extras = [r for group in project["optional-dependencies"].values() for r in group if not r.startswith("latentcomm")]
    assert names(project["dependencies"]) | names(extras) == listed
    for req in map(Requirement, project["dependencies"]):  # and this environment satisfies the core
        assert req.specifier.contains(distribution(req.name).version, prereleases=True), req
    assert not any(re.sub(r"[-_.]+", "-", n).lower().startswith(HEAVY) for n in names(project["dependencies"]))


def test_the_core_environment_has_no_torch(core_python):
    res = subprocess.run([str(core_python), "-c", "import av, numpy, PIL, cryptography, paho.mqtt; import torch"],
                         capture_output=True, text=True, env=core_env(), timeout=120)  # fmt: skip
    assert "No module named 'torch'" in res.stderr, res.stderr


def test_a_sealed_h264_stream_runs_on_the_core_alone(core_python, tmp_path):
    clip = make_video(tmp_path / "clip.mp4", frames=20, size=128)
    key = tmp_path / "robot.key"
    kg = subprocess.run([str(core_python), "-m", "latentcomm", "keygen", str(key)], cwd=REPO, env=core_env(),
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert kg.returncode == 0, kg.stderr
    # Each process reports, as it exits, every heavy module it imported (none may be).
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        f"atexit.register(lambda: open(os.environ['IMPORTED'], 'a').write(' '.join(m for m in sys.modules "
        f"if m.split('.')[0] in {HEAVY!r}) + '\\n'))\n"
    )
    imported = tmp_path / "imported.txt"
    env = core_env()
    env.update(PYTHONPATH=str(probe), IMPORTED=str(imported))
    rx = ReceiverProcess("--no-show", "--json", "--out", str(tmp_path / "out"), "--key", str(key), env=env,
                         argv0=[str(core_python), str(REPO / "receiver_sdvae.py")])  # fmt: skip
    try:
        port = rx.wait_listening()
        assert "receiving video only" in rx.stderr and "latentcomm[vae]" in rx.stderr
        tx = subprocess.run(
            [str(core_python), str(REPO / "sender_sdvae.py"), "--port", str(port), "--codec", "h264", "--video",
             str(clip), "--fps", "10", "--bandwidth", "256k", "--key", str(key), "--json"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert tx.returncode == 0, tx.stderr
        first = rx.next_json()
        assert first["codec"] == "video" and first["frame_type"] == "key" and first["key_id"]
        assert Path(first["video_path"]).suffix == ".mkv" and "recon_path" not in first
    finally:
        rx.stop()
    lines = imported.read_text().splitlines()
    assert len(lines) == 2 and not any(line.strip() for line in lines), lines


@pytest.mark.parametrize(
    "argv, extra",
    [
        (["receiver_sdvae.py", "--codec", "learned"], "latentcomm[learned]"),
        (["sender_sdvae.py", "--codec", "learned", "--image", str(APPLE)], "latentcomm[learned]"),
        (["receiver_sdvae.py", "--no-show", "--dashboard", "0"], "latentcomm[dashboard]"),
        (["receiver_sdvae.py", "--no-show", "--record", "x.mcap"], "latentcomm[foxglove]"),
        (["receiver_sdvae.py", "--no-show", "--enhance"], "latentcomm[learned]"),
    ],
)
def test_what_needs_an_extra_says_which_in_one_line(core_python, argv, extra, tmp_path):
    res = subprocess.run([str(core_python), str(REPO / argv[0]), "--port", "0", *argv[1:]], cwd=tmp_path,
                         env=core_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert extra in lines[-1] and lines[-1].startswith("error:"), res.stderr
