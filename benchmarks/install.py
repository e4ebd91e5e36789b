"""What each install costs: a fresh virtual environment per target, ``pip install`` of the checkout
with that extra, its time, its size on disk and whether torch came with it.

    python -m benchmarks.install [--targets core,robot,learned,full] [--json PATH]

Targets: ``core`` (``pip install .``: live video both ways, sealed frames, TCP and MQTT), ``robot``
(the core plus the dashboard and Foxglove/MCAP), ``learned`` (the learned codec and its torch) and
``full`` (``.[full]``, what ``pip install -r requirements.txt`` gives). The time is pip's against
whatever index this machine's pip is configured with (a local mirror is much faster than the
internet; the JSON says which), so compare the sizes across machines and the times only within one
run. Each core environment then runs ``latentcomm send --help`` and checks ``import torch`` fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from tqdm import tqdm

from benchmarks.harness import RESULTS, cpu_features, cpu_name, write_results

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "core": ".",
    "robot": ".[dashboard,foxglove]",
    "learned": ".[learned]",
    "full": ".[full]",
}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def measure(target: str, spec: str, work: Path) -> dict:
    """One fresh venv, the checkout installed with ``spec``; time, size and what it holds."""
    env_dir = work / target
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    before = _size(site)
    t0 = time.perf_counter()
    res = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          spec.replace(".", str(work / "src"), 1)], capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"pip install {spec} failed:\n{res.stderr[-2000:]}")
    listed = json.loads(subprocess.run([str(python), "-m", "pip", "list", "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)  # fmt: skip
    names = {d["name"].lower() for d in listed} - {"pip", "setuptools"}
    torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0
    works = subprocess.run([str(env_dir / "bin" / "latentcomm"), "send", "--help"], capture_output=True).returncode == 0
    row = {
        "target": target,
        "pip_install": f"pip install '{spec}'",
        "seconds": round(seconds, 1),
        "mib": round((_size(site) - before) / 2**20),
        "distributions": len(names),
        "torch": torch,
        "cuda_packages": sorted(n for n in names if n.startswith(("nvidia-", "cuda-", "triton"))),
        "send_help_runs": works,
    }
    shutil.rmtree(env_dir, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, from: " + ", ".join(TARGETS))
    p.add_argument("--json", type=Path, default=RESULTS / "install.json", help="where to write the results")
    args = p.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    index = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        skip = (".git", "runs", "received", "__pycache__", ".*cache*", "*.egg-info", "build", "benchmarks", "tests")
        shutil.copytree(REPO, work / "src", ignore=shutil.ignore_patterns(*skip))
        rows = [measure(t, TARGETS[t], work) for t in tqdm(targets, desc="installs", unit="venv")]
    for row in rows:
        print(f"{row['target']:8} {row['seconds']:7.1f} s {row['mib']:6} MiB {row['distributions']:4} distributions"
              f"  torch: {'yes' if row['torch'] else 'no'}")  # fmt: skip
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
        "pip_index": "local mirror" if "file://" in index else "configured index",
        "rows": rows,
    }
    write_results(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
