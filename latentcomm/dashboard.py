"""The receiver's live dashboard: a Starlette app served by uvicorn on a background thread.

The receiver's main thread reports every decoded image (``on_image``) and every refused frame
(``on_rejected``) to a ``DashboardState``; the web app reads it. The page (`/`) is one HTML file with
inline script and no build step: it loads the current state from `/api/state`, then listens to
`/events` (server-sent events) and redraws the per-sender cards, the bytes-per-second chart and the
rejected frames as they change, without reloading. Images come from `/image/{sender}/{kind}.png`;
`/metrics` gives the same figures in Prometheus' text format (latentcomm/prometheus.py).

With a token (required beyond loopback), every request, the event stream included, must carry it
as ``?token=...`` or ``Authorization: Bearer ...``; the page passes on the token it was opened with.
Without one, only requests whose ``Host`` names this machine's loopback (``localhost``, 127.x,
``[::1]``) are answered: a web page on another site that rebinds its own name to 127.0.0.1 (DNS
rebinding) sends its own name as the Host, and is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import ipaddress
import json
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from latentcomm.errors import TransportError, require
from latentcomm.metrics import psnr, ssim

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("dashboard.html")
#: Seconds of bytes-per-second history kept for the chart.
HISTORY_S = 300
#: Rejected frames kept for the page.
MAX_REJECTIONS = 50
#: Cards on the page (one per sender: key id or host, and --name): past it the longest silent goes.
MAX_CARDS = 64
#: Live-event (/events) connections served at once; more are answered 503. Each costs a write per change.
MAX_EVENT_CLIENTS = 32
#: A live-event client gets at most one update this often (a page is read by a person; a receiver at
#: hundreds of frames a second would otherwise write the state to every page for every frame).
EVENT_INTERVAL_S = 0.1
#: Window of the per-sender frame rate.
FPS_WINDOW_S = 10.0
#: Seconds of a video stream's charts (bit rate, fps, latency, link rate).
SERIES_S = 60


@dataclass
class SenderStats:
    """What the page shows for one sender (a key id when frames are sealed, else the peer's address)."""

    sender: str
    frames: int = 0
    bytes: int = 0  # on the wire (the frame, original included when one came)
    payload_bytes: int = 0  # the latent alone
    pixels: int = 0
    decode_s_total: float = 0.0
    last: dict = field(default_factory=dict)
    recon_png: bytes = b""
    original_png: bytes = b""
    version: int = 0
    times: deque = field(default_factory=lambda: deque(maxlen=256))
    psnr_db: float | None = None
    ssim: float | None = None
    #: Video streams: per second, [bytes, frames, sender's latency ms, sender's link bits/s].
    seconds: dict = field(default_factory=dict)
    video: bool = False

    def series(self, now: float) -> list[list]:
        """The last SERIES_S seconds: [t, kbit/s, fps, latency ms or None, link kbit/s or None]."""
        sec = int(now)
        out = []
        for t in range(sec - SERIES_S + 1, sec + 1):
            b, n, lat, link = self.seconds.get(t, (0, 0, None, None))
            out.append([t, round(8 * b / 1000, 1), n, lat, round(link / 1000, 1) if link else None])
        return out

    def as_dict(self, now: float) -> dict:
        recent = [t for t in self.times if now - t <= FPS_WINDOW_S]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        return {
            "sender": self.sender,
            "frames": self.frames,
            "bytes": self.bytes,
            "bpp": 8 * self.payload_bytes / self.pixels if self.pixels else None,
            "fps": round(fps, 3),
            "decode_ms": round(1000 * self.decode_s_total / self.frames, 1) if self.frames else None,
            "psnr_db": self.psnr_db,
            "ssim": self.ssim,
            "has_original": bool(self.original_png),
            "last": self.last,
            "version": self.version,
            "video": self.video,
            "series": self.series(now) if self.video else [],
        }


def sender_name(peer: str) -> str:
    """The card a frame belongs on: a TCP peer's address without its (per-connection) port, a broker
    sender's whole client id (``mqtt:<id>``: every unsealed broker sender was once one card "mqtt")."""
    if peer.startswith("mqtt:"):
        return peer
    return peer.rsplit(":", 1)[0]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast: the page gets a new picture per video frame
    return buf.getvalue()


class DashboardState:
    """Thread-safe store of what the dashboard shows, fed by the receiver, read by the web app."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.senders: dict[str, SenderStats] = {}
        self.rejections: deque = deque(maxlen=MAX_REJECTIONS)
        self.rejected_total = 0
        self.per_second: dict[int, int] = {}
        self.version = 0
        self.started = time.time()
        self._changed: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._event_data: tuple[int, bytes] = (-1, b"")  # the newest version, serialised once for all clients

    def _bump(self) -> None:
        self.version += 1
        for loop, event in list(self._changed):
            loop.call_soon_threadsafe(event.set)

    def subscribe(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> bool:
        """Wake ``event`` at every change; False (not subscribed) past ``MAX_EVENT_CLIENTS``."""
        with self._lock:
            if len(self._changed) >= MAX_EVENT_CLIENTS:
                return False
            self._changed.append((loop, event))
            return True

    def event_data(self) -> tuple[int, bytes]:
        """(version, the server-sent event of the state): built once per change, whatever the number
        of clients (each serialising the whole state once per frame took a receiver from 929 frames a
        second to 34 with 300 idle pages)."""
        version = self.version
        cached = self._event_data
        if cached[0] == version:
            return cached
        snap = self.snapshot()
        data = f"data: {json.dumps(snap, allow_nan=False, default=_finite)}\n\n".encode()
        self._event_data = (snap["version"], data)
        return self._event_data

    def unsubscribe(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            if (loop, event) in self._changed:
                self._changed.remove((loop, event))

    def on_image(self, report: dict, recon: Image.Image, original: Image.Image | None) -> None:
        """One decoded image (the receiver's report dict and the pictures)."""

        sender = report.get("key_id") or sender_name(str(report.get("peer", "?")))
        if report.get("stream"):  # a sender's --name: its own card, apart from other streams of that host or key
            sender = f"{sender} ({report['stream']})"
        quality: dict = {}
        if original is not None and original.size == recon.size:
            try:
                quality = {"psnr_db": round(psnr(original, recon), 2), "ssim": None}
                try:
                    value = ssim(original, recon)
                except ImportError:  # a video-only install has no scikit-image: PSNR alone
                    value = None
                quality["ssim"] = round(value, 4) if value is not None else None
            except Exception:  # a figure on the page is never worth a frame: log it and show none
                log.exception("dashboard: no PSNR/SSIM for an image from %s", report.get("peer"))
        recon_png, original_png = _png(recon), _png(original) if original is not None else b""
        now = time.time()
        with self._lock:
            s = self.senders.pop(sender, None) or SenderStats(sender)
            self.senders[sender] = s  # the most recently heard last
            while len(self.senders) > MAX_CARDS:  # named streams, keys, hosts: the page stays bounded
                self.senders.pop(next(iter(self.senders)))
            s.frames += 1
            s.bytes += int(report.get("frame_bytes", 0))
            s.payload_bytes += int(report.get("payload_bytes", 0))
            h, w = report.get("image_size", (recon.height, recon.width))
            s.pixels += h * w
            s.decode_s_total += float(report.get("decode_s", 0.0))
            s.times.append(now)
            s.recon_png, s.original_png = recon_png, original_png
            s.psnr_db, s.ssim = quality.get("psnr_db"), quality.get("ssim")
            s.last = {
                k: report[k]
                for k in ("index", "name", "seq", "peer", "codec", "quality", "payload_bytes", "frame_bytes", "text",
                          "model", "frame_type", "link_bps", "sender_latency_ms", "coded_size")
                if k in report
            } | {"image_size": [h, w], "time": now}  # fmt: skip
            s.version += 1
            sec = int(now)
            if report.get("codec") == "video":
                s.video = True
                b, n, lat, link = s.seconds.get(sec, (0, 0, None, None))
                s.seconds[sec] = (
                    b + int(report.get("frame_bytes", 0)),
                    n + 1,
                    report.get("sender_latency_ms", lat),
                    report.get("link_bps", link),
                )
                for old in [t for t in s.seconds if t < sec - SERIES_S]:
                    del s.seconds[old]
            self.per_second[sec] = self.per_second.get(sec, 0) + int(report.get("frame_bytes", 0))
            for old in [t for t in self.per_second if t < sec - HISTORY_S]:
                del self.per_second[old]
            self._bump()

    def on_rejected(self, peer: str, reason: str) -> None:
        with self._lock:
            self.rejected_total += 1
            self.rejections.appendleft({"time": time.time(), "peer": peer, "reason": reason})
            self._bump()

    def snapshot(self) -> dict:
        now = time.time()
        with self._lock:
            sec = int(now)
            history = [[t, self.per_second.get(t, 0)] for t in range(sec - 119, sec + 1)]
            return {
                "version": self.version,
                "now": now,
                "senders": [s.as_dict(now) for s in self.senders.values()],
                "rejected_total": self.rejected_total,
                "rejections": list(self.rejections),
                "bytes_per_second": history,
            }

    def image(self, sender: str, kind: str) -> bytes | None:
        with self._lock:
            s = self.senders.get(sender)
            if s is None:
                return None
            data = s.recon_png if kind == "recon" else s.original_png if kind == "original" else b""
            return data or None


def build_app(state: DashboardState, token: str | None = None):
    """The Starlette app: page, state, images, live events; every route behind the token if set."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    class TokenCheck(BaseHTTPMiddleware):
        async def dispatch(self, request, call_next):
            if token is None:
                if not loopback_host(request.headers.get("host", "")):
                    return PlainTextResponse(
                        "this dashboard answers only to localhost (start it with --dashboard-token to serve other "
                        "host names)\n",
                        status_code=403,
                    )
            else:
                given = request.query_params.get("token", "")
                auth = request.headers.get("authorization", "")
                if auth.lower().startswith("bearer "):
                    given = auth[7:]
                if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8", "replace")):
                    return PlainTextResponse("dashboard token missing or wrong\n", status_code=401)
            return await call_next(request)

    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    async def api_state(request):
        return JSONResponse(state.snapshot(), headers={"Cache-Control": "no-store"})

    async def image(request):
        data = state.image(request.path_params["sender"], request.path_params["kind"])
        if data is None:
            return PlainTextResponse("no such image\n", status_code=404)
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def events(request):
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        if not state.subscribe(loop, changed):
            return PlainTextResponse(
                f"too many live-event clients ({MAX_EVENT_CLIENTS}); /api/state still answers\n", status_code=503
            )

        async def stream():
            try:
                last = -1
                while not await request.is_disconnected():
                    if state.version != last:
                        last, data = state.event_data()
                        yield data
                        await asyncio.sleep(EVENT_INTERVAL_S)  # later changes wait, then go as one
                    try:
                        await asyncio.wait_for(changed.wait(), timeout=5.0)
                    except TimeoutError:
                        yield ": keep-alive\n\n"  # also notices a closed page within 5 s
                    changed.clear()
            finally:
                state.unsubscribe(loop, changed)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    from prometheus_client import generate_latest

    from latentcomm.prometheus import CONTENT_TYPE, registry_for

    registry = registry_for(state)

    async def metrics(request):
        return Response(generate_latest(registry), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", page),
        Route("/metrics", metrics),
        Route("/api/state", api_state),
        Route("/events", events),
        Route("/image/{sender}/{kind}.png", image),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenCheck)])


def loopback_host(host_header: str) -> bool:
    """Does an HTTP Host header name this machine's loopback (``localhost``, ``127.0.0.1:8080``,
    ``[::1]:8080``)? Anything else, a rebound domain included, is not."""

    host = host_header.strip().lower()
    if host.startswith("["):
        inside, _, rest = host[1:].partition("]")
        host = inside if rest == "" or (rest.startswith(":") and rest[1:].isdigit()) else ""
    elif host.count(":") == 1:
        host, port = host.split(":", 1)
        if not port.isdigit():
            return False
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> str:
    """A dashboard token must be printable ASCII without spaces (it travels in a URL and a header):
    ValueError with the reason otherwise (a non-UTF-8 command-line token made every request fail)."""
    if not token or len(token) > 512 or not all(33 <= ord(c) < 127 for c in token):
        raise ValueError("a dashboard token must be 1-512 printable ASCII characters without spaces")
    return token


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serializable: {value!r}")


class Dashboard:
    """The web server on a daemon thread; ``stop()`` ends it."""

    def __init__(self, state: DashboardState, host: str, port: int, token: str | None = None) -> None:
        require("starlette", "dashboard", "--dashboard")
        uvicorn = require("uvicorn", "dashboard", "--dashboard")
        require("prometheus_client", "dashboard", "--dashboard's /metrics")

        self.state = state
        config = uvicorn.Config(build_app(state, token), host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # the receiver owns SIGINT/SIGTERM
        self._thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TransportError(f"dashboard could not listen on {host}:{port} (port in use?)")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        self.address = sock.getsockname()[:2]

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=5)
