"""The wire, sans-I/O (like ``h11``): frames to bytes and back, no sockets inside.

- :mod:`~latentcomm.wire.legacy`: the original scripts' frame, byte for byte.
- :mod:`~latentcomm.wire.v2`: v2 frames and acknowledgements.
- :mod:`~latentcomm.wire.encodings`: the latent encodings and compressions frames name.
- :mod:`~latentcomm.wire.keys`, :mod:`~latentcomm.wire.sealed`, :mod:`~latentcomm.wire.broker_seal`:
  key files, sealed TCP connections, sealed frames through a broker.
"""
