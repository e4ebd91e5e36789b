"""`pip install .` gives a `latentcomm` command that works away from the checkout.

The package is installed into a fresh virtual environment (its heavy dependencies, torch and the
rest, come from this interpreter's site-packages, so nothing is downloaded), then a receiver and a
sender run through the installed command from an empty directory, with the shipped learned codec
found inside the installed package.

"This interpreter" is the running environment, which may itself be a virtual environment (the way
most users run a README): the new one sees its site-packages through a ``.pth`` file, not the base
interpreter's (``system_site_packages`` would give the base's, whose setuptools may lack
``bdist_wheel``), so the package builds with the setuptools the requirements installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO, ReceiverProcess, script_env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".git", "runs", "received", "__pycache__", ".*cache*", "*.egg-info", "build"),
    )
    env_dir = root / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    running = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    (Path(own) / "running-environment.pth").write_text("\n".join(running) + "\n")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    work = root / "elsewhere"
    work.mkdir()
    env = script_env()
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    return {"python": python, "bin": env_dir / "bin" / "latentcomm", "cwd": work, "env": env}


def test_the_installed_package_finds_its_models_inside_itself(installed):
    res = subprocess.run(
        [str(installed["python"]), "-c", "import latentcomm.codecs as c; print(c.LEARNED_MODEL_DIR)"],
        cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    path = res.stdout.strip()
    assert path.endswith("latentcomm/models_data/latentcomm-lic") and str(REPO) not in path
    assert (installed["python"].parent.parent / "lib").exists()


def test_send_and_receive_through_the_installed_command(installed, tmp_path):
    cmd = str(installed["bin"])
    assert subprocess.run([cmd, "--help"], capture_output=True, text=True, env=installed["env"]).returncode == 0
    rx = ReceiverProcess("--codec", "learned", "--no-show", "--json", "--out", str(tmp_path / "out"),
                         env=installed["env"], cwd=installed["cwd"], argv0=[cmd, "receive"])  # fmt: skip
    try:
        rx.wait_listening()
        key = tmp_path / "k.key"
        kg = subprocess.run([cmd, "keygen", str(key)], capture_output=True, text=True, env=installed["env"])
        assert kg.returncode == 0 and "key id" in kg.stdout
        tx = subprocess.run(
            [cmd, "send", "--codec", "learned", "--port", str(rx.port), "--image", str(REPO / "temp" / "apple.jpeg"),
             "--json"],
            cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert tx.returncode == 0, tx.stderr
        sent = json.loads(tx.stdout.splitlines()[0])
        assert sent["acknowledged"]
        got = rx.next_json()
        assert got["payload_sha256"] == sent["payload_sha256"] and got["model"] == sent["model"]
    finally:
        rx.stop()
