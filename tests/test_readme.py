"""Every command in the README's ```bash blocks, run as written, in a fresh folder.

Each block runs in its own folder holding what a reader's checkout holds (the scripts, the package,
the models, temp/) plus the files its commands name (drive.mp4, photos/, cam/, photo.png). A
receiver that runs until Ctrl-C starts in the background and must be listening before the next
command, still running after the last, and stop cleanly; every other command must succeed. Every
command must be listed below as run, rewritten (the few words a reader changes: the installed
`latentcomm` command becomes `python3 -m latentcomm`, the host named `server` this machine) or
skipped with the reason; a new README command fails this test until it is.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, script_env
from tests.videos import make_video

README = (REPO / "README.md").read_text()
#: Commands that can't run on one test machine, and why (each covered elsewhere where it can be).
SKIP = {
    r"^python3 -m pip install -r requirements-dev\.txt && python3 -m pytest": "the test suite itself",
    r"^python3 -m pip install \.$": "installs the package: tests/test_install.py does, from a copy",
    r"--camera 0": "no camera on a test machine: camera sources are PyAV's, as files are",
    r"rtsp://cam\.local": "no IP camera here: tests/test_video.py serves a live MPEG-TS stream on loopback",
}
#: What a reader would change, and the test does: (pattern, replacement).
REWRITE = [
    (r"^python3 -m pip install -r requirements\.txt && ", ""),  # the environment is installed already
    (r"^latentcomm ", "python3 -m latentcomm "),  # the installed command: tests/test_install.py
    (r"--host server\b", "--host 127.0.0.1"),
]
#: Receivers that run until stopped.
BACKGROUND = re.compile(r"^(python3 receiver_sdvae\.py|latentcomm receive)\b(?!.*--once)")


def blocks() -> list[list[str]]:
    """The README's bash blocks, their comments cut; a block that only starts receivers (the
    walkthrough's terminal 1) runs together with the next (terminal 2)."""
    out: list[list[str]] = []
    carried: list[str] = []
    for body in re.findall(r"```bash\n(.*?)```", README, re.S):
        lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in body.splitlines()]
        commands = carried + [line for line in lines if line]
        if all(BACKGROUND.match(c) for c in commands):
            carried = commands
            continue
        out.append(commands)
        carried = []
    assert not carried, f"the README's last block only starts receivers: {carried}"
    return out


def skipped(command: str) -> str | None:
    """Why a command is not run here (None: it is)."""
    return next((why for pattern, why in SKIP.items() if re.search(pattern, command)), None)


#: The blocks with something to run (the test suite's own command is the one left out).
RUNNABLE = [b for b in blocks() if any(skipped(c) is None for c in b)]


def scratch(tmp: Path) -> Path:
    """A reader's checkout, and the files the README's commands name."""
    for name in ("sender_sdvae.py", "receiver_sdvae.py", "sender_sdvae_metrics.py", "latentcomm", "models", "temp"):
        (tmp / name).symlink_to(REPO / name)
    make_video(tmp / "drive.mp4", frames=20, size=128)
    for folder in ("photos", "cam"):
        (tmp / folder).mkdir()
        for i in range(2):
            shutil.copy(REPO / "temp" / "apple.jpeg", tmp / folder / f"{i}.jpeg")
    shutil.copy(REPO / "temp" / "apple.jpeg", tmp / "photo.png")
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    for name in ("python3", "python"):  # the interpreter running the tests, whatever python3 is on PATH
        (bin_dir / name).symlink_to(sys.executable)
    return tmp


def wait_listening(proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "Receiver listening on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"receiver did not start (rc={proc.poll()}):\n{log.read_text()}")
        time.sleep(0.1)


def test_every_command_is_run_or_skipped_with_a_reason():
    commands = [c for block in blocks() for c in block]
    assert len(commands) >= 15
    for pattern in SKIP:
        assert any(re.search(pattern, c) for c in commands), f"SKIP names a command the README no longer has: {pattern}"


@pytest.mark.exclusive  # the README's own ports (65432, 8080): one block at a time
@pytest.mark.parametrize("block", RUNNABLE, ids=[b[-1][:40] for b in RUNNABLE])
def test_the_readme_block_runs_as_written(block, tmp_path):
    folder = scratch(tmp_path)
    env = script_env()
    env["PATH"] = f"{folder / '.bin'}{os.pathsep}{env['PATH']}"
    background: list[tuple[subprocess.Popen, Path, str]] = []
    try:
        for n, command in enumerate(block):
            if skipped(command):
                continue
            line = command
            for pattern, replacement in REWRITE:
                line = re.sub(pattern, replacement, line)
            if BACKGROUND.match(command):
                log = folder / f"receiver-{n}.log"
                proc = subprocess.Popen(["bash", "-c", line], cwd=folder, env=env, stdout=log.open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
                background.append((proc, log, command))
                wait_listening(proc, log)
            else:
                res = subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True,
                                     timeout=600)  # fmt: skip
                assert res.returncode == 0, f"{command!r} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        for proc, log, command in background:
            assert proc.poll() is None, f"{command!r} exited early:\n{log.read_text()[-3000:]}"
    finally:
        for proc, _, _ in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, log, command in background:
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
            assert rc == 0, f"{command!r} did not stop cleanly (rc={rc}):\n{log.read_text()[-3000:]}"
