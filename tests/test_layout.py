"""The package's shape (issue "A house a newcomer can find their way in"): no import cycles, the public
API declared and importable, every registered codec and objective real, and the old module paths that
users may have written still working, in-process and as ``python -m``."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys

import latentcomm
from latentcomm.codecs.base import REGISTRY, ImageCodec, codec_class
from latentcomm.training import OBJECTIVES, objective_class
from latentcomm.training.loop import Objective
from latentcomm.transports import BROKERS, broker_transport
from tests.conftest import REPO, script_env


def import_graph():
    from benchmarks.import_graph import measure

    return measure(REPO)


def test_the_import_graph_has_no_cycles_and_nothing_points_back_up():
    graph = import_graph()
    assert graph["cycles"] == [] and len(graph["imports_pointing_back_up"]) <= 1, graph["imports_pointing_back_up"]


def test_the_public_api_is_declared_and_every_name_loads():
    assert latentcomm.__all__ == sorted(latentcomm.__all__)
    for name in latentcomm.__all__:
        assert getattr(latentcomm, name) is not None, name
    assert latentcomm.load_codec is importlib.import_module("latentcomm.codecs").load_codec


def test_every_registered_codec_and_objective_is_a_real_module():
    for name in REGISTRY:
        cls = codec_class(name)
        assert issubclass(cls, ImageCodec) and "from_options" in vars(cls), name
    for scheme, module in BROKERS.items():
        transport = importlib.import_module(module)
        assert callable(transport.Sender.pipeline) and callable(transport.Source.from_args), scheme
        assert broker_transport(f"{scheme}://127.0.0.1:1") is transport
    for objective in OBJECTIVES:
        cls = objective_class(objective)
        assert issubclass(cls, Objective) and cls.name == objective and not inspect.isabstract(cls), objective


def test_old_module_paths_keep_working():
    code = (
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "import latentcomm\n"
        "from latentcomm.protocol_v2 import Connection\n"
        "print('warned')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=script_env(), cwd=REPO)
    assert r.returncode != 0 and "latentcomm.protocol_v2 moved to latentcomm.wire.v2" in r.stderr
    code = (
        "from latentcomm.protocol_v2 import Connection\n"
        "from latentcomm.secure import Key, BrokerSealer, SealError\n"
        "from latentcomm.train import main, embedded_model_config, save_checkpoint\n"
        "from latentcomm.codecs import LearnedCodec, VaeCodec, LEARNED_MODEL_DIR\n"
        "import latentcomm.learned as L, latentcomm.wire.v2 as v2\n"
        "assert Connection is v2.Connection and L.LearnedCodecModel.__module__ == 'latentcomm.codecs.learned.model'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=script_env(), cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    for old in ("latentcomm.train", "latentcomm.throttle", "latentcomm.train_codec"):
        r = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True, env=script_env())
        assert r.returncode == 0 and "usage:" in r.stdout, (old, r.stderr)
    code = "import latentcomm.secure as s\ns.nothing"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "moved to latentcomm.wire" in r.stderr.strip().splitlines()[-1]


def test_every_subpackage_is_installed():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    package = REPO / "latentcomm"
    found = {".".join(p.parent.relative_to(REPO).parts) for p in package.rglob("__init__.py")}
    assert found <= listed, f"pyproject.toml doesn't install {sorted(found - listed)}"
