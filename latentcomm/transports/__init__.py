"""Transports carry sans-I/O frames (:mod:`latentcomm.wire`) between processes without changing them:
TCP (:mod:`~latentcomm.transports.tcp`), an MQTT broker (:mod:`~latentcomm.transports.mqtt`), and a
rate-limiting TCP relay for tests and benchmarks (:mod:`~latentcomm.transports.throttle`). Senders and
servers of both kinds meet the protocols in :mod:`~latentcomm.transports.base`."""
