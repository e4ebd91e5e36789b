"""What broke when tried by strangers on the broker and the socket and by long runs (issue "Hardening III").

Each test names the issue's item it covers and fails on the code before the fix:

1. a broker client without the key stopped a sealed video group ........ test_strangers_on_the_broker_*
2. a stranger who knows the key id made a sealed receiver buffer a body .. test_a_stranger_*
   (and test_security.py: test_a_stranger_who_knows_the_key_id_*, test_recorded_sessions_*)
3. video decoders outlived their connections ........................... test_video_decoders_are_freed_*
4. 13-byte inter frames cost a whole picture each ...................... test_a_flood_of_skip_frames_*,
   test_the_pixel_budget_*
5. the SPS was decoded before the size limit was checked ............... test_a_sequence_header_larger_*
6. every sealed broker frame rewrote the whole replay memory ............ test_a_sealed_broker_frame_*,
   test_the_replay_memory_*
7. a malformed replay memory crashed or failed open ..................... test_every_malformed_replay_memory_*
8. 300 idle live-event clients slowed a receiver 27-fold .................. test_live_event_clients_are_capped_*
9. state that grew forever in long runs ................................ test_a_day_long_stream_keeps_*
11. smaller: one forged plaintext refusal ended a sealed broker sender .. test_one_plaintext_refusal_*;
    bit-flipped H.264 key frames .................................... test_a_bit_flipped_key_frame_*
10. --fps 1e-300 ended in a traceback ................................... test_rate_and_time_flags_*
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import av
import pytest

from benchmarks.hardening import h264_units
from latentcomm.codecs.video import FLAG_KEY, VIDEO_HEADER
from latentcomm.dashboard import MAX_EVENT_CLIENTS, DashboardState
from latentcomm.receiver import PixelBudget
from latentcomm.wire import v2
from latentcomm.wire.keys import Key, generate_key
from latentcomm.wire.replay import REPLAY_WINDOW, ReplayError, ReplayMemory, new_stream_id
from latentcomm.wire.sealed import TYPE_SEALED, SecureConnection
from tests.conftest import PYTHON, REPO, run_script, script_env
from tests.test_broker import MOSQUITTO, Broker, receiver_args
from tests.videos import make_video

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt install mosquitto)")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (``VmHWM``: its peak), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def video_frame(seq: int, unit: bytes, number: int, shape_hw: tuple[int, int], key: bool) -> v2.ImageFrame:
    payload = VIDEO_HEADER.pack(1, FLAG_KEY if key else 0, 1000, number, number, 0, 0) + unit
    h, w = shape_hw
    return v2.ImageFrame(seq, "h264", 5, 0, (3, h, w), (h, w), payload, f"v-{number:06d}" if key else "")


def exchange(port: int, frames: list[v2.ImageFrame]) -> list[v2.Ack]:
    """Send every frame on one connection at once, then read their acknowledgements."""
    tx = v2.Connection(v2.Role.SENDER)
    acks = []
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"".join(tx.send(f) for f in frames))
        while len(acks) < len(frames):
            while (ev := tx.next_event()) is v2.NEED_DATA:
                data = s.recv(65536)
                assert data, f"closed after {len(acks)} acknowledgements"
                tx.receive_data(data)
            acks.append(ev)
    return acks


# -- 2. a sealed TCP receiver buffers nothing of a stranger's before the key is proven ---------------------


def test_a_stranger_with_the_key_id_is_hung_up_on_before_any_body(tmp_path, start_receiver, tiny_model):
    key_file = tmp_path / "k.key"
    key_id = generate_key(key_file).key_id
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--key", str(key_file))
    before = rss_mib(rx.proc.pid)
    socks = []
    for _ in range(16):
        stranger = SecureConnection(v2.Role.SENDER, key=Key(os.urandom(32)))
        hello = bytearray(stranger.hello())
        hello[v2.PREFIX.size : v2.PREFIX.size + 8] = key_id  # the id travels in clear; the key does not
        s = socket.create_connection(("127.0.0.1", rx.port), timeout=30)
        s.sendall(bytes(hello))
        reply = s.recv(4096)
        assert reply[5] == 3  # the receiver's HELLO: the id is known
        # A body announced at 90 MiB, and 2 MiB of it sent: refused from the prefix, not buffered.
        s.sendall(v2.PREFIX.pack(v2.MAGIC, v2.VERSION, TYPE_SEALED, 0, 90 * 2**20))
        try:
            s.sendall(os.urandom(2 * 2**20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        socks.append(s)
    for s in socks:
        s.settimeout(30)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass  # hung up on with our bytes unread: as good as a close
        s.close()
    deadline = time.monotonic() + 30
    while rx.stderr.count("before the sender's key confirmation") < 16 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rx.stderr.count("before the sender's key confirmation") == 16
    assert rss_mib(rx.proc.pid) - before < 64  # 16 x 2 MiB would have stayed before the fix


# -- 1. strangers on the broker can't stop a sealed video group -------------------------------------------


@needs_mosquitto
@pytest.mark.exclusive
def test_strangers_on_the_broker_cannot_stop_a_sealed_video_group(tmp_path, start_receiver):
    """A client without the key publishes, all through the stream: a retained claim naming nobody,
    forged last wills of both receivers, empty hand-backs, and every real claim and will it sees
    published again. The group ignores all of it: one owner decodes the stream, the sender's frames
    are acknowledged, no key frame is asked for after the first."""
    import paho.mqtt.client as mqtt

    broker = Broker(tmp_path)
    try:
        generate_key(tmp_path / "k.key")
        sealed = ("--key", str(tmp_path / "k.key"), "--session-expiry", "0")
        rxs = [start_receiver(*receiver_args(broker, f"vid{i}"), *sealed) for i in range(2)]
        recorded: list[tuple[str, bytes]] = []
        attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        attacker.on_message = lambda c, u, m: recorded.append((m.topic, m.payload))
        attacker.connect("127.0.0.1", broker.port)
        attacker.subscribe("latentcomm/cams/owners/+", qos=1)
        attacker.subscribe("latentcomm/cams/gone/+", qos=1)
        attacker.loop_start()
        stop = threading.Event()

        def attack() -> None:
            while not stop.is_set():
                for topic, payload in list(recorded)[-8:]:  # real claims and wills, published again
                    attacker.publish(topic, payload, qos=1, retain=True)
                for sender in {t.rsplit("/", 1)[-1] for t, _ in recorded if "/owners/" in t}:
                    topic = f"latentcomm/cams/owners/{sender}"
                    attacker.publish(topic, json.dumps({"owner": "nobody", "lease_s": 60}), qos=1, retain=True)
                    attacker.publish(topic, b"", qos=1, retain=True)
                for i in range(2):
                    attacker.publish(f"latentcomm/cams/gone/vid{i}", b"", qos=1)
                time.sleep(0.3)

        video = make_video(tmp_path / "pan.mp4", frames=60, fps=10, size=128)
        tx = subprocess.Popen(
            [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "h264", "--broker", broker.url, "--topic", "cams",
             "--video", str(video), "--key", str(tmp_path / "k.key"), "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(),
        )  # fmt: skip
        # Frame-name claims appear once the first frame is owned; the attack starts then.
        deadline = time.monotonic() + 60
        while not any("/owners/" in t for t, _ in recorded):
            assert time.monotonic() < deadline, rxs[0].stderr
            time.sleep(0.05)
        attacker.subscribe("latentcomm/cams/owners/#", qos=1)  # the fake "nobody" claims are recorded too
        threading.Thread(target=attack, daemon=True).start()
        out, err = tx.communicate(timeout=180)
        stop.set()
        assert tx.returncode == 0, err
        summary = json.loads(out.splitlines()[-1])
        time.sleep(1.0)
        for rx in rxs:
            rx.stop()
        attacker.loop_stop()
    finally:
        broker.stop()
    decoded = [sum(1 for line in list(rx.stdout_lines.queue) if '"h264"' in line) for rx in rxs]
    takeovers = sum(rx.stderr.count("taking the video stream") for rx in rxs)
    # Before the fix: 1 of 45 frames acknowledged, a key frame asked for every few frames.
    assert summary["frames_acknowledged"] >= 0.8 * summary["frames_sent"], summary
    assert summary["key_frames"] <= 2, summary
    assert takeovers <= 2 and max(decoded) >= 0.8 * summary["frames_sent"], (decoded, takeovers)
    assert any("not sealed by this group, or replayed" in rx.stderr for rx in rxs)


# -- 3. video decoders are freed with their connections, and bounded by pixels --------------------------


def test_video_decoders_are_freed_when_their_connections_end(start_receiver, tiny_model):
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--max-video-pixels", str(4096 * 4096),
                        "--max-pixel-rate", "1e9", "--max-total-pixel-rate", "1e9")  # fmt: skip
    key = h264_units(4096, 4096)[0]  # 50 KB
    exchange(rx.port, [video_frame(1, key, 0, (4096, 4096), True)])  # the first one: allocator warm-up
    time.sleep(1.0)
    before = rss_mib(rx.proc.pid)
    for _i in range(12):  # each a stream of its own: one key frame, then the connection closes
        assert exchange(rx.port, [video_frame(1, key, 0, (4096, 4096), True)])[0].ok
    time.sleep(1.0)
    grown = rss_mib(rx.proc.pid) - before
    # Before the fix every stream kept its decoder (~39 MiB each: 12 x 39 = 470 MiB) until 64 streams.
    assert grown < 150, grown


# -- 4. a pixel-rate budget per stream and in total --------------------------------------------------------


def test_a_flood_of_skip_frames_is_refused_past_the_pixel_rate_budget(start_receiver, tiny_model):
    rate = 640 * 352 * 5  # five 640x352 pictures a second
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--max-pixel-rate", str(rate))
    units = h264_units(640, 352, pictures=61)
    assert max(len(u) for u in units[1:]) < 40  # all-skip inter frames
    frames = [video_frame(i + 1, u, i, (352, 640), i == 0) for i, u in enumerate(units)]
    t0 = time.monotonic()
    acks = exchange(rx.port, frames)
    elapsed = time.monotonic() - t0
    ok = sum(a.ok for a in acks)
    # One second of budget to start with, then five a second: everything past it is refused undecoded.
    assert ok <= 5 + 5 * elapsed + 1, (ok, elapsed)
    over = [a for a in acks if a.status == v2.Status.TOO_LARGE]
    assert over and "pixel-rate budget" in over[0].message and "--max-pixel-rate" in over[0].message
    assert all(a.ok or a.status in (v2.Status.TOO_LARGE, v2.Status.KEY_FRAME_NEEDED) for a in acks)
    assert rx.proc.poll() is None


def test_the_pixel_budget_refills_at_its_rate_per_stream_and_for_all():
    now = [0.0]
    budget = PixelBudget(per_stream=100, total=150, clock=lambda: now[0])
    assert budget.take("a", 100) is None  # a second's worth at once
    assert "this stream's" in budget.take("a", 10)
    assert budget.take("b", 50) is None
    assert "all streams" in budget.take("c", 10)  # 150 of 150 spent
    now[0] = 0.5
    assert budget.take("a", 50) is None and "this stream's" in budget.take("a", 1)
    now[0] = 10.0
    assert budget.take("c", 100) is None  # refilled, never past one second's worth
    assert budget.take("c", 1) is not None


def test_a_live_video_picture_past_the_default_size_is_refused_before_decoding(start_receiver, tiny_model):
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model))
    key = h264_units(2048, 2048)[0]
    [ack] = exchange(rx.port, [video_frame(1, key, 0, (2048, 2048), True)])
    assert ack.status == v2.Status.TOO_LARGE and "--max-video-pixels" in ack.message


# -- 5. the sequence header's size is refused before the decoder allocates it ------------------------------


def test_a_sequence_header_larger_than_the_frame_claims_is_refused_before_decoding(start_receiver, tiny_model):
    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--max-pixels", "65536")
    key = h264_units(8192, 8192)[0]  # 197 KB, whose SPS says 8192x8192
    time.sleep(0.5)
    peak = rss_mib(rx.proc.pid, "VmHWM")
    [ack] = exchange(rx.port, [video_frame(1, key, 0, (16, 16), True)])  # the frame header says 16x16
    assert ack.status == v2.Status.KEY_FRAME_NEEDED and "sequence header" in ack.message
    # Decoding it first took +150 MiB (64 Mpx of picture) before the mismatch was seen.
    assert rss_mib(rx.proc.pid, "VmHWM") - peak < 50
    assert rx.proc.poll() is None


# -- 6. the replay memory: a constant cost per frame, windows kept compactly, old streams aged out ---------


DAY = 86400.0


def test_the_replay_memory_writes_a_line_per_frame_and_refuses_replays_after_a_restart(tmp_path):
    now = [1_800_000_000.0]
    path = tmp_path / "sealed-streams.json"
    memory = ReplayMemory(path, clock=lambda: now[0])
    key_id = b"k" * 8
    streams = [new_stream_id(now[0]) for _ in range(4096)]
    for sid in streams:  # 4,096 streams, each with a counter
        memory.record(key_id, sid, 0)
    snapshot = path.stat().st_mtime_ns, path.stat().st_ino
    journal = memory.journal_path.stat().st_size
    for counter in range(1, 201):  # 200 frames of one stream: the snapshot is not rewritten
        memory.check(key_id, streams[7], counter)
        memory.record(key_id, streams[7], counter)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == snapshot
    assert memory.journal_path.stat().st_size - journal < 200 * 80  # about 60 bytes a frame
    memory.close()
    again = ReplayMemory(path, clock=lambda: now[0])  # a restart: snapshot and journal read back
    for counter in (0, 5, 200):
        with pytest.raises(ReplayError, match="seen before"):
            again.check(key_id, streams[7], counter)
    again.check(key_id, streams[7], 201)
    with pytest.raises(ReplayError):
        again.check(key_id, streams[4000], 0)
    assert len(path.read_bytes()) < 4096 * 120  # windows cut to the bits in use


def test_the_replay_memory_ages_streams_out_without_reopening_replay(tmp_path):
    now = [1_800_000_000.0]
    memory = ReplayMemory(tmp_path / "m.json", max_age_s=30 * DAY, clock=lambda: now[0])
    key_id = b"k" * 8
    old = new_stream_id(now[0])
    for counter in range(REPLAY_WINDOW + 10):
        memory.record(key_id, old, counter)
    now[0] += 2 * 3600  # idle two hours: its window collapses to the newest counter
    memory.sweep()
    with pytest.raises(ReplayError):
        memory.check(key_id, old, REPLAY_WINDOW + 5)
    now[0] += 31 * DAY  # a month idle: retired, and its frames are refused as too old to be new
    fresh = new_stream_id(now[0])
    memory.record(key_id, fresh, 0)
    memory.sweep()
    assert len(memory) == 1 and memory.retired == 1
    with pytest.raises(ReplayError, match="retired"):
        memory.check(key_id, old, 0)
    memory.check(key_id, new_stream_id(now[0]), 0)  # a sender that starts now is welcome
    memory.close()
    reopened = ReplayMemory(tmp_path / "m.json", clock=lambda: now[0])
    with pytest.raises(ReplayError, match="retired"):
        reopened.check(key_id, old, 0)


def test_the_replay_memory_stays_bounded_in_streams(tmp_path):
    now = [1_800_000_000.0]
    memory = ReplayMemory(tmp_path / "m.json", max_streams=100, clock=lambda: now[0])
    ids = []
    for _i in range(300):  # a sender restarting every minute for five hours
        now[0] += 60
        ids.append(new_stream_id(now[0]))
        memory.record(b"k" * 8, ids[-1], 0)
    assert len(memory) <= 101
    with pytest.raises(ReplayError):
        memory.check(b"k" * 8, ids[0], 0)  # forgotten, but refused: it started before the horizon


@needs_mosquitto
@pytest.mark.exclusive
def test_a_sealed_broker_frame_appends_to_the_replay_memory_instead_of_rewriting_it(tmp_path, start_receiver):
    from tests.test_broker import frames_folder, start_sender

    broker = Broker(tmp_path)
    try:
        key = generate_key(tmp_path / "k.key")
        out = tmp_path / "out"
        out.mkdir()
        memory = ReplayMemory(out / "sealed-streams.json")  # 4,096 streams with full windows already
        for _ in range(4096):
            sid = new_stream_id()
            memory.record(key.key_id, sid, REPLAY_WINDOW)
            memory.record(key.key_id, sid, 0)
        memory.close()
        rx = start_receiver(*receiver_args(broker, "rx"), "--key", str(tmp_path / "k.key"), "--out", str(out))
        snapshot = (out / "sealed-streams.json").stat().st_mtime_ns
        tx = start_sender(broker, frames_folder(tmp_path / "a", 12, 1), "--key", str(tmp_path / "k.key"))
        stdout, stderr = tx.communicate(timeout=300)
        assert tx.returncode == 0, stderr
        rx.stop()
    finally:
        broker.stop()
    assert (out / "sealed-streams.json").stat().st_mtime_ns == snapshot
    assert len((out / "sealed-streams.json.journal").read_text().splitlines()) >= 12


# -- 7. every malformed replay memory gets the same one-line refusal --------------------------------------


@pytest.mark.parametrize(
    "content",
    ["[]", '{"streams": 5}', '{"streams": null}', '{"version": 1, "streams": [[1, 2]]}',
     '{"version": 1, "streams": [{"key_id": "00", "stream_id": "00", "high": "1e400", "seen": ""}]}',
     '{"version": 2, "horizon": 0, "streams": [{"id": "zz", "high": 1, "used": 0, "seen": "!!"}]}',
     "not json"],
)  # fmt: skip
def test_every_malformed_replay_memory_is_refused_in_one_line(tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sealed-streams.json").write_text(content)
    generate_key(tmp_path / "k.key")
    r = run_script("receiver_sdvae.py", "--codec", "h264", "--no-show", "--broker", "mqtt://127.0.0.1:1", "--key",
                   str(tmp_path / "k.key"), "--out", str(out), timeout=120)  # fmt: skip
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "replay memory" in lines[0] and "move it away" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


# -- 10. rate and time flags within sensible bounds, refused in one line ----------------------------------


@pytest.mark.parametrize(
    "args",
    [("--codec", "h264", "--video", "x.mp4", "--fps", "1e-300"),
     ("--codec", "learned", "--image", "temp", "--fps", "1e-300"),
     ("--codec", "h264", "--video", "x.mp4", "--bandwidth", "1e-300"),
     ("--codec", "h264", "--video", "x.mp4", "--bandwidth", "auto:1e400"),
     ("--codec", "h264", "--video", "x.mp4", "--key-interval", "0"),
     ("--codec", "h264", "--video", "x.mp4", "--max-frames", "-3"),
     ("--timeout", "1e-300"), ("--retries", "-1"), ("--ack-timeout", "inf"), ("--wait-for-receiver", "1e30")],
)  # fmt: skip
def test_rate_and_time_flags_out_of_bounds_are_one_line_and_exit_2(args):
    r = run_script("sender_sdvae.py", *args, timeout=60)
    assert r.returncode == 2, (args, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("sender_sdvae.py: error:")


def test_the_throttle_and_receiver_bound_their_rates_and_times_too():
    r = subprocess.run([PYTHON, "-m", "latentcomm.transports.throttle", "--rate", "1e-300"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env=script_env())  # fmt: skip
    assert r.returncode == 2 and "--rate" in r.stderr and "Traceback" not in r.stderr
    for args in (("--read-timeout", "1e-300"), ("--max-pixel-rate", "0"), ("--frame-timeout", "nan")):
        r = run_script("receiver_sdvae.py", *args, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)


# -- 8. the dashboard's live events: capped, and one snapshot per change for all clients -------------------


def test_live_event_clients_are_capped_and_share_one_snapshot(tmp_path, start_receiver, tiny_model):
    from urllib.parse import urlparse

    from tests.test_dashboard import dashboard_url

    rx = start_receiver("--no-show", "--json", "--model", str(tiny_model), "--dashboard", "0")
    url = urlparse(dashboard_url(rx))
    clients, statuses = [], []
    for _ in range(MAX_EVENT_CLIENTS + 8):
        s = socket.create_connection((url.hostname, url.port), timeout=30)
        s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{url.port}\r\n\r\n".encode())
        statuses.append(s.recv(4096).split(b"\r\n", 1)[0])
        clients.append(s)
    assert sum(b" 200 " in st for st in statuses) == MAX_EVENT_CLIENTS
    assert sum(b" 503 " in st for st in statuses) == 8
    for s in clients:
        s.close()
    # Closed pages free their places (noticed at the next keep-alive, 5 s at most).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.create_connection((url.hostname, url.port), timeout=30) as s:
            s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{url.port}\r\n\r\n".encode())
            if b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]:
                break
        time.sleep(0.5)
    else:
        raise AssertionError("no place freed")

    state = DashboardState()
    first = state.event_data()
    assert state.event_data() is first  # no change: the same bytes for every client
    state.on_rejected("10.0.0.1:5", "test")
    second = state.event_data()
    assert second[0] == first[0] + 1 and second is state.event_data()


# -- 9. a day-long stream keeps its memory flat ------------------------------------------------------------


def test_a_day_long_stream_keeps_its_memory_flat():
    """A simulated day at 5 fps through what a stream sender keeps (the rate estimator, the latencies
    and bytes by second), and a simulated hour of a 1 Mbit/s link through the throttle's log: each
    structure is as big after the day as after its first six hours."""
    from latentcomm.ratecontrol import HISTORY_SAMPLES, DelayBasedEstimator
    from latentcomm.stream import LATENCY_SAMPLES, SERIES_S, StreamTally
    from latentcomm.transports.throttle import LOG_BIN_S, LOG_S, Throttle

    estimator, tally = DelayBasedEstimator(), StreamTally()
    t = 0.0

    def run(hours: float) -> list[int]:
        nonlocal t
        for _ in range(int(hours * 3600 * 5)):
            t += 0.2
            estimator.on_ack(t - 0.05, t, 1600)
            tally.acknowledged(0.05, int(t), 1600)
        return [len(estimator.history), len(estimator._floor), len(estimator._acked), len(tally.latencies),
                len(tally._per_second)]  # fmt: skip

    after_six_hours = run(6)
    after_a_day = run(18)
    assert all(day <= six + 2 for day, six in zip(after_a_day[:4], after_six_hours[:4], strict=True)), (
        after_six_hours, after_a_day)  # fmt: skip
    assert after_a_day[0] <= HISTORY_SAMPLES and after_a_day[3] <= LATENCY_SAMPLES
    assert after_a_day[4] <= SERIES_S + 61
    assert len(tally.bits_by_second(t)) == SERIES_S

    now = [0.0]
    link = Throttle(("127.0.0.1", 9), 1e9, clock=lambda: now[0])
    try:
        sizes = []
        for hours in (0.5, 1.5):
            while now[0] < hours * 3600:
                now[0] += 0.012  # a 1,500-byte chunk every 12 ms: 1 Mbit/s
                link._take(1500)
            sizes.append(len(link.log))
        assert sizes[0] == sizes[1] == round(LOG_S / LOG_BIN_S)  # full after half an hour, and no bigger
        assert sum(n for _, n in link.log) <= 1500 * LOG_S / 0.012 + 1500
    finally:
        link.close()


# -- 11. smaller ------------------------------------------------------------------------------------------


@needs_mosquitto
@pytest.mark.exclusive
def test_one_plaintext_refusal_before_the_first_sealed_answer_does_not_end_a_sealed_sender(tmp_path, start_receiver):
    """Anyone on the broker (or any Zenoh peer) can publish a plaintext UNKNOWN_KEY before a sealed
    sender's first authenticated acknowledgement; one is not believed (a receiver without the key
    refuses the frame again when it is sent again)."""
    import paho.mqtt.client as mqtt
    from PIL import Image

    from latentcomm.codecs import LEARNED_MODEL_DIR, LearnedCodec
    from latentcomm.images import pil_to_tensor
    from latentcomm.transports.mqtt import MqttSender

    broker = Broker(tmp_path)
    try:
        key = generate_key(tmp_path / "k.key")
        rx = start_receiver(*receiver_args(broker, "rx"), "--key", str(tmp_path / "k.key"))
        sender = MqttSender(broker.url, "cams", timeout=30, retries=2, ack_timeout=10, key=key)
        attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        attacker.connect("127.0.0.1", broker.port)
        attacker.loop_start()
        forged = v2.encode_ack(v2.Ack(0, v2.Status.UNKNOWN_KEY, "forged"))
        attacker.publish(sender.acks_topic, forged, qos=1).wait_for_publish(5)
        time.sleep(0.5)
        codec = LearnedCodec(LEARNED_MODEL_DIR, "cpu", "fp32")
        enc = codec.encode(pil_to_tensor(Image.new("RGB", (64, 64), (90, 20, 200))))
        frame = v2.ImageFrame(1, codec.model_id, enc.encoding, enc.compression, enc.shape, (64, 64), enc.payload, "a")
        assert sender.send(frame).ok
        sender.close()
        attacker.loop_stop()
        rx.stop()
    finally:
        broker.stop()


def test_a_bit_flipped_key_frame_is_refused_whenever_ffmpeg_can_tell():
    """Single bit flips in a real H.264 key frame: every one FFmpeg's decoder detects (an error, or a
    picture it marks corrupt) is refused with KEY_FRAME_NEEDED; most are (measured: 86% of 200). The
    rest decode to a picture no decoder can tell from a real one: in transit v2's checksum and sealing
    are what catch them."""
    import random

    from PIL import Image

    from latentcomm.codecs.video import KeyFrameNeeded, VideoCodec, parse_payload

    picture = Image.open(REPO / "temp" / "apple.jpeg").convert("RGB").resize((320, 176))
    enc = VideoCodec("h264", 256_000).encode_picture(picture, captured=0.0)
    rng = random.Random(7)
    refused = 0
    for _ in range(40):
        flipped = bytearray(enc.payload)
        flipped[rng.randrange(VIDEO_HEADER.size + 40, len(flipped))] ^= 1 << rng.randrange(8)
        plain = av.CodecContext.create("h264", "r")
        try:
            frames = plain.decode(av.Packet(parse_payload(bytes(flipped))[1]))
            detected = not frames or frames[0].is_corrupt
        except av.error.FFmpegError:
            detected = True
        try:
            VideoCodec("h264").decode_picture(enc.shape, bytes(flipped), (176, 320))
        except KeyFrameNeeded:
            refused += 1
            continue
        assert not detected  # shown only when FFmpeg itself saw nothing wrong
    assert refused >= 20
