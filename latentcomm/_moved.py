"""Old module paths keep working after the package's move into ``codecs/``, ``wire/``, ``transports/``
and ``training/`` (issue "A house a newcomer can find their way in").

``import latentcomm.protocol_v2`` gives a small module that hands out the new module's names (and
says once, as a DeprecationWarning, where they live now); ``python -m latentcomm.train`` and
``python -m latentcomm.throttle`` run the new modules. One table, no copies of old files.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

#: Old dotted path -> new one.
MOVED = {
    "latentcomm.codec": "latentcomm.wire.encodings",
    "latentcomm.protocol": "latentcomm.wire.legacy",
    "latentcomm.protocol_v2": "latentcomm.wire.v2",
    "latentcomm.secure": "latentcomm.wire",
    "latentcomm.transport": "latentcomm.transports.tcp",
    "latentcomm.mqtt": "latentcomm.transports.mqtt",
    "latentcomm.throttle": "latentcomm.transports.throttle",
    "latentcomm.learned": "latentcomm.codecs.learned.model",
    "latentcomm.learned_context": "latentcomm.codecs.learned.context",
    "latentcomm.entropy": "latentcomm.codecs.learned.entropy",
    "latentcomm.refine": "latentcomm.codecs.learned.refine",
    "latentcomm.postfilter": "latentcomm.codecs.learned.postfilter",
    "latentcomm.video": "latentcomm.codecs.video",
    "latentcomm.train": "latentcomm.training",
    "latentcomm.train_codec": "latentcomm.training.codec",
    "latentcomm.train_context": "latentcomm.training.context",
    "latentcomm.train_decoder": "latentcomm.training.decoder",
    "latentcomm.train_postnet": "latentcomm.training.postnet",
    "latentcomm.train_enhance": "latentcomm.training.enhance",
}
#: ``latentcomm.secure`` was split in three; its names come from whichever now holds them.
SPLIT = {
    "latentcomm.secure": ("latentcomm.wire.keys", "latentcomm.wire.sealed", "latentcomm.wire.broker_seal"),
    "latentcomm.train": (
        "latentcomm.training",
        "latentcomm.training.loop",
        "latentcomm.training.autoencoder",
        "latentcomm.training.common",
        "latentcomm.training.datasets",
    ),
}
#: The old per-objective scripts: ``python -m`` on one runs ``latentcomm.training --objective NAME``.
OBJECTIVE_SCRIPTS = {
    "latentcomm.train_codec": "codec",
    "latentcomm.train_context": "context",
    "latentcomm.train_decoder": "decoder",
    "latentcomm.train_postnet": "postnet",
    "latentcomm.train_enhance": "enhance",
}


class _Loader(importlib.abc.Loader):
    def __init__(self, old: str) -> None:
        self.old, self.new = old, MOVED[old]

    def create_module(self, spec) -> types.ModuleType:
        return types.ModuleType(self.old, f"Moved to {self.new}.")

    def exec_module(self, module: types.ModuleType) -> None:
        homes = SPLIT.get(self.old, (self.new,))
        old, new = self.old, self.new

        def __getattr__(name: str):
            for home in homes:
                target = importlib.import_module(home)
                if hasattr(target, name):
                    warnings.warn(f"{old} moved to {new}", DeprecationWarning, stacklevel=2)
                    return getattr(target, name)
            raise AttributeError(f"module {old!r} (moved to {new}) has no attribute {name!r}")

        module.__getattr__ = __getattr__  # type: ignore[attr-defined]

    def get_code(self, fullname: str) -> types.CodeType:
        """What ``python -m <old path>`` runs: the new module as ``__main__`` (for an objective's old
        script, the training command with its ``--objective``)."""
        if objective := OBJECTIVE_SCRIPTS.get(fullname):
            code = (
                "import sys\nfrom latentcomm.training import main\n"
                f"raise SystemExit(main(['--objective', {objective!r}, *sys.argv[1:]]))"
            )
            return compile(code, self.old, "exec")
        return compile(
            f"import runpy\nrunpy.run_module({self.new!r}, run_name='__main__', alter_sys=True)", self.old, "exec"
        )


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Loader(fullname))


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
