"""A broker as brokers are run: Mosquitto with a TLS listener and a password file, certificates made
here with ``cryptography``. A sender and a receiver reach it with ``mqtts://USER@HOST`` and
``--broker-ca``, the password from a file or the environment; a wrong password, an unknown CA and a
password in the URL are each a one-line error, quickly."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, script_env
from tests.test_broker import MOSQUITTO, frames_folder

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None or MOSQUITTO_PASSWD is None, reason="mosquitto not installed (apt install mosquitto)"
)


def make_ca_and_server_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for 127.0.0.1 / localhost: (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("latentcomm test CA")).issuer_name(name("latentcomm test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def tls_broker(tmp_path):
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), "robot7", "hunter2-but-longer"], check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
        # Run as root, Mosquitto drops to its own user, which can't read pytest's private folders.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
    yield port, ca
    proc.terminate()
    proc.wait(10)


def test_mqtts_with_a_password_carries_frames_and_refuses_what_it_should(tls_broker, tmp_path, start_receiver):
    port, ca = tls_broker
    url = f"mqtts://robot7@127.0.0.1:{port}"
    secret = tmp_path / "broker.password"
    secret.write_text("hunter2-but-longer\n")
    rx = start_receiver("--codec", "learned", "--no-show", "--json", "--broker", url, "--topic", "cams",
                        "--broker-ca", str(ca), "--broker-password-file", str(secret))  # fmt: skip
    rx.wait_listening()
    folder = frames_folder(tmp_path / "imgs", 2, 90)
    env = script_env(LATENTCOMM_BROKER_PASSWORD="hunter2-but-longer")  # the sender's from the environment
    tx = subprocess.run(
        [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "learned", "--broker", url, "--topic", "cams",
         "--broker-ca", str(ca), "--image", str(folder), "--size", "0", "--json", "--ack-timeout", "10"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert tx.returncode == 0, tx.stderr
    assert json.loads(tx.stdout.splitlines()[-1]) == {"summary": True, "acknowledged": 2, "failed": 0}
    got = [json.loads(rx.stdout_lines.get(timeout=30)) for _ in range(2)]
    assert sorted(g["name"] for g in got) == sorted(p.name for p in folder.iterdir())
    rx.stop()

    def send(*extra: str, env_password: str | None = None) -> subprocess.CompletedProcess:
        env = script_env(**({"LATENTCOMM_BROKER_PASSWORD": env_password} if env_password else {}))
        env.pop("LATENTCOMM_BROKER_PASSWORD", None) if env_password is None else None
        return subprocess.run(
            [PYTHON, str(REPO / "sender_sdvae.py"), "--codec", "learned", "--topic", "cams", "--image",
             str(folder), "--size", "0", "--timeout", "10", *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    started = time.monotonic()
    wrong = send("--broker", url, "--broker-ca", str(ca), env_password="wrong")
    assert wrong.returncode == 1 and "refused the connection" in wrong.stderr and "Traceback" not in wrong.stderr
    assert time.monotonic() - started < 60
    unknown_ca = send("--broker", url, env_password="hunter2-but-longer")  # the system's CAs don't know ours
    assert unknown_ca.returncode == 1 and "certificate verify failed" in unknown_ca.stderr
    assert "Traceback" not in unknown_ca.stderr
    in_url = send("--broker", f"mqtts://robot7:hunter2@127.0.0.1:{port}", "--broker-ca", str(ca))
    assert in_url.returncode != 0 and "no password in the URL" in in_url.stderr and "Traceback" not in in_url.stderr
    assert os.environ.get("LATENTCOMM_BROKER_PASSWORD") is None  # nothing leaked into this process
