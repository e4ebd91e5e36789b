"""The receiver's figures for a monitoring system: ``GET /metrics`` on the dashboard's server.

Why: an operator's Prometheus (or anything that scrapes its text format) watches a fleet of
receivers without a browser. The figures are the dashboard's own (:class:`DashboardState`), read at
scrape time by a custom collector, so nothing is counted twice and nothing is kept for it alone.
Per stream (the dashboard's card: key id or host, and the sender's ``--name``):

    latentcomm_frames_total{stream}                  frames decoded
    latentcomm_bytes_total{stream}                   bytes received, on the wire
    latentcomm_frames_per_second{stream}             over the last 10 s
    latentcomm_sender_latency_seconds{stream}        the sender's last capture-to-acknowledgement
    latentcomm_link_bits_per_second{stream}          the sender's link rate (fixed or estimated)
    latentcomm_decode_seconds_total{stream}          time spent decoding its frames

and for the receiver ``latentcomm_refused_total`` (frames refused, any reason) and
``latentcomm_streams`` (cards held). The route is behind the dashboard's token like every other.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DashboardState(Protocol):
    """What is read of latentcomm.dashboard.DashboardState (named here, not imported: the dashboard
    imports this module, and nothing points back up)."""

    def snapshot(self) -> dict: ...


class DashboardCollector(Collector):
    """The dashboard state's figures as Prometheus metric families, read at each scrape."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def collect(self):
        snap = self.state.snapshot()
        families = {
            "frames": CounterMetricFamily("latentcomm_frames", "frames decoded", labels=["stream"]),
            "bytes": CounterMetricFamily("latentcomm_bytes", "bytes received on the wire", labels=["stream"]),
            "fps": GaugeMetricFamily("latentcomm_frames_per_second", "frames per second, last 10 s", labels=["stream"]),
            "latency": GaugeMetricFamily(
                "latentcomm_sender_latency_seconds", "the sender's last capture-to-acknowledgement", labels=["stream"]
            ),
            "link": GaugeMetricFamily(
                "latentcomm_link_bits_per_second", "the sender's link rate (fixed or estimated)", labels=["stream"]
            ),
            "decode": CounterMetricFamily("latentcomm_decode_seconds", "time spent decoding", labels=["stream"]),
        }
        for s in snap["senders"]:
            name = [s["sender"]]
            families["frames"].add_metric(name, s["frames"])
            families["bytes"].add_metric(name, s["bytes"])
            families["fps"].add_metric(name, s["fps"])
            if s.get("decode_ms") is not None:
                families["decode"].add_metric(name, s["decode_ms"] * s["frames"] / 1000)
            last = s.get("last", {})
            if last.get("sender_latency_ms"):
                families["latency"].add_metric(name, last["sender_latency_ms"] / 1000)
            if last.get("link_bps"):
                families["link"].add_metric(name, last["link_bps"])
        yield from families.values()
        refused = CounterMetricFamily("latentcomm_refused", "frames refused (any reason)")
        refused.add_metric([], snap["rejected_total"])
        yield refused
        streams = GaugeMetricFamily("latentcomm_streams", "streams (dashboard cards) held")
        streams.add_metric([], len(snap["senders"]))
        yield streams


def registry_for(state: DashboardState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DashboardCollector(state))
    return registry
