"""What broke when tried by strangers on the broker and the socket and by long runs (issue "Hardening III").

Each test names the issue's item it covers and fails on the code before the fix:

2. a stranger who knows the key id made a sealed receiver buffer a body .. test_a_stranger_*
   (and test_security.py: test_a_stranger_who_knows_the_key_id_*, test_recorded_sessions_*)
"""

from __future__ import annotations

import os
import socket
import time

from latentcomm.wire import v2
from latentcomm.wire.keys import Key, generate_key
from latentcomm.wire.sealed import TYPE_SEALED, SecureConnection


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


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
