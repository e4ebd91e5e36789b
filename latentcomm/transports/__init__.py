"""Transports carry sans-I/O frames (:mod:`latentcomm.wire`) between processes without changing them:
TCP (:mod:`~latentcomm.transports.tcp`), an MQTT broker (:mod:`~latentcomm.transports.mqtt`), Zenoh
peer to peer (:mod:`~latentcomm.transports.zenoh`), and a rate-limiting TCP relay for tests and
benchmarks (:mod:`~latentcomm.transports.throttle`). Senders and sources of every kind meet the
protocols in :mod:`~latentcomm.transports.base`.

``--broker URL`` picks a transport by the URL's scheme from :data:`BROKERS`: a new one is one module
(with a ``Sender``, a :class:`~latentcomm.transports.base.FrameSender` whose ``pipeline(window,
ack_timeout)`` gives live video, and a ``Source``, a :class:`~latentcomm.transports.base.FrameSource`
with ``from_args``) and one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from urllib.parse import urlparse

from latentcomm.errors import LatentcommError, require

#: ``--broker`` URL scheme -> the module that carries frames that way.
BROKERS: dict[str, str] = {
    "mqtt": "latentcomm.transports.mqtt",  # through an MQTT broker (Mosquitto): groups, viewers, persistence
    "mqtts": "latentcomm.transports.mqtt",  # the same over TLS, with a user and a password or client certificate
    "zenoh": "latentcomm.transports.zenoh",  # Zenoh, peer to peer: query per frame, reply per acknowledgement
    "zenohs": "latentcomm.transports.zenoh",  # the same over TLS (a receiver certificate; mutual with --broker-ca)
}


def broker_transport(url: str) -> ModuleType:
    """The transport module for a ``--broker`` URL (LatentcommError naming the schemes there are)."""
    scheme = urlparse(url).scheme
    if scheme not in BROKERS:
        kinds = " or ".join(f"{s}://HOST:PORT" for s in BROKERS if not s.endswith("s"))
        kinds += " (over TLS: mqtts://USER@HOST:PORT, zenohs://HOST:PORT)"
        raise LatentcommError(f"--broker must look like {kinds}, got {url!r}")
    if scheme in ("zenoh", "zenohs"):
        require("zenoh", "zenoh", f"--broker {scheme}://")
    return importlib.import_module(BROKERS[scheme])
