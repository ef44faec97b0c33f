"""An agent pinned by its certificate's SHA-256 is the only listener a client sends its token to.

Review finding Q4: an operator trusts a self-signed agent by naming its
certificate in ``SSL_CERT_FILE``; such certificates are often ``CA:TRUE``, so
whoever holds that agent's key could issue a certificate for another agent's
address and receive that agent's token and models.  A pin
(``where.cert_sha256``, or ``--agent NAME=URL#sha256=HEX``) trusts one
certificate and nothing it signs.  Real agents and real TLS listeners here.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices.client import AgentClient, AgentError
from devices.profile import DeviceProfile, ProfileError
from hwsearch.agents import UndeclaredReach, load_agents, resolve_profile
from tests._listeners import Listener
from tests._tls import issued_by, self_signed_certificate
from tests.test_agent_hardening import MEASURING, TOKEN, tiny_model

REPO = Path(__file__).resolve().parents[1]


def pinned_profile(url: str, pin: str) -> DeviceProfile:
    return DeviceProfile.from_dict({
        "name": "edge", "warmup": {"runs": 2, "seconds": 0.2},
        "protocol": {"min_rounds": 5, "max_rounds": 10, "max_seconds": 10},
        "where": {"kind": "agent", "url": url, "token_env": "EDGE_TOKEN", "retries": 2, "cert_sha256": pin}})


def served_sha256(port: int) -> str:
    """The SHA-256 of the certificate a TLS server on 127.0.0.1 presents."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port)))).hexdigest()


class TlsListener(Listener):
    """A TLS server with a certificate of its own that keeps what each client sends first, and answers nothing."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.connections = 0
        super().__init__()
        self.url = f"https://127.0.0.1:{self.port}"

    def serve(self, connection: socket.socket) -> None:
        self.connections += 1
        connection.settimeout(2.0)
        try:
            with self.context.wrap_socket(connection, server_side=True) as tls:
                super().serve(tls)
        except (OSError, ssl.SSLError):
            connection.close()


@pytest.fixture
def no_authority(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CA setting names the test certificates: only a pin can make them trusted."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_the_agent_prints_its_pin_and_a_pinned_client_measures_with_no_authority(
        tmp_path: Path, no_authority: None) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = subprocess.Popen(
        [sys.executable, "-m", "devices.agent", "--port", str(port), "--token", TOKEN, *MEASURING,
         "--state-dir", str(tmp_path / "state"), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        env={**os.environ, "PYTHONPATH": str(REPO), "DEVICES_CALIBRATION_DIR": str(tmp_path / "calibration"),
             "DEVICES_LOCK_DIR": str(tmp_path / "locks")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while not any(line.startswith("certificate sha256 ") for line in lines):
            assert time.monotonic() < deadline and (line := agent.stdout.readline()), "".join(lines)
            lines.append(line)
        said = lines[-1]
        pin = said.split()[2].rstrip(":")
        assert pin == served_sha256(port), "the printed pin is not the served certificate's"
        assert f"--agent NAME=https://127.0.0.1:{port}#sha256={pin}" in said, said
        model = tmp_path / "m.onnx"
        model.write_bytes(tiny_model(seed=41))
        url = f"https://127.0.0.1:{port}"
        unpinned = DeviceProfile.from_dict({"name": "edge", "where": {"kind": "agent", "url": url, "retries": 3}})
        with pytest.raises(AgentError, match="CERTIFICATE_VERIFY_FAILED.*pin the agent's certificate") as refused:
            AgentClient(unpinned, token=TOKEN).describe()  # no authority vouches for it, however often asked
        assert "attempts" not in str(refused.value), "a certificate check was retried"
        [row] = AgentClient(pinned_profile(url, pin), token=TOKEN).measure_many([model])
        assert row.median_ms > 0 and row.model_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    finally:
        agent.kill()
        agent.wait(timeout=30)


def test_a_certificate_the_trusted_agents_key_issued_gets_no_byte_of_a_pinned_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Q4 impostor: its certificate chains to the agent certificate the operator trusts (so an unpinned
    client sends it the token), but it is not the pinned one."""
    trusted = self_signed_certificate(tmp_path / "agent")
    impostor = TlsListener(*issued_by(tmp_path / "impostor", trusted))
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted[0]))
    try:
        unpinned = DeviceProfile.from_dict({"name": "edge", "where": {"kind": "agent", "url": impostor.url,
                                                                     "retries": 0}})
        with pytest.raises(AgentError):  # closed unanswered; what matters is what it read
            AgentClient(unpinned, token=TOKEN).describe()
        assert f"Bearer {TOKEN}".encode() in b"".join(impostor.received), "the impostor's chain was not trusted"
        impostor.received, impostor.connections = [], 0

        pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(trusted[0].read_text())).hexdigest()
        with pytest.raises(AgentError) as refused:
            AgentClient(pinned_profile(impostor.url, pin), token=TOKEN).describe()
        time.sleep(0.5)  # anything sent would have arrived
        assert impostor.connections == 1, "a certificate mismatch was retried"
        assert b"".join(impostor.received) == b"", "a pinned client sent the impostor its request"
        assert f"not the pinned {pin}" in str(refused.value) and "nothing was sent" in str(refused.value)
        assert served_sha256(impostor.port) in str(refused.value)
    finally:
        impostor.close()


@pytest.mark.parametrize("where, says", [
    ({"url": "https://127.0.0.1:1", "cert_sha256": "AB:" * 31 + "A"}, "64 hex digits"),
    ({"url": "https://127.0.0.1:1", "cert_sha256": "ab" * 31}, "64 hex digits"),
    ({"url": "https://127.0.0.1:1", "cert_sha256": "g" * 64}, "64 hex digits"),
    ({"url": "https://127.0.0.1:1", "cert_sha256": 7}, "64 hex digits"),
    ({"url": "http://127.0.0.1:1", "cert_sha256": "ab" * 32}, "for an https:// url"),
], ids=["broken-colons", "short", "not-hex", "a-number", "plain-http"])
def test_a_malformed_pin_is_refused_naming_the_field(where: dict[str, object], says: str) -> None:
    with pytest.raises(ProfileError, match="where.cert_sha256") as refused:
        DeviceProfile.from_dict({"name": "edge", "where": {"kind": "agent", **where}})
    assert says in str(refused.value)
    with pytest.raises(ProfileError, match="where.cert_sha256"):
        DeviceProfile.from_dict({"name": "edge", "where": {"cert_sha256": "ab" * 32}})


def test_a_declared_pin_reaches_the_profile_and_a_clients_own_pin_is_refused() -> None:
    pin = "cd" * 32
    agents = load_agents([f"edge=https://10.0.0.5:8765/#sha256={pin}", "other=https://10.0.0.6:8765"],
                         environ={"HWSEARCH_AGENT_TOKEN_EDGE": "t1", "HWSEARCH_AGENT_TOKEN_OTHER": "t2"})
    assert agents["edge"].url == "https://10.0.0.5:8765" and agents["edge"].cert_sha256 == pin
    assert agents["other"].cert_sha256 is None
    profile, token = resolve_profile({"name": "e", "where": {"kind": "agent", "name": "edge"}}, agents)
    assert profile.where.cert_sha256 == pin and profile.where.url == "https://10.0.0.5:8765" and token == "t1"
    profile, _ = resolve_profile({"name": "o", "where": {"kind": "agent", "name": "other"}}, agents)
    assert profile.where.cert_sha256 is None
    with pytest.raises(UndeclaredReach, match="where.cert_sha256"):
        resolve_profile({"name": "e", "where": {"kind": "agent", "name": "other", "cert_sha256": pin}}, agents)
    for bad in (f"edge=http://10.0.0.5:8765#sha256={pin}", "edge=https://10.0.0.5:8765#sha256=",
                "edge=https://10.0.0.5:8765#sha256=xyz"):
        with pytest.raises(ValueError, match="#sha256= takes the SHA-256 the agent prints"):
            load_agents([bad], environ={"HWSEARCH_AGENT_TOKEN_EDGE": "t1"})


def test_a_mistyped_pin_is_refused_not_taken_for_a_fragment_and_openssls_form_is_read() -> None:
    """``#SHA256=`` and ``#sha256:`` stayed in the URL as a fragment: the agent ran unpinned, and requests went to
    ``GET /`` (the path after the fragment is dropped) with the token."""
    pin = "cd" * 32
    colons = ":".join(["CD"] * 32)  # as `openssl x509 -noout -fingerprint -sha256` prints it
    tokens = {"HWSEARCH_AGENT_TOKEN_EDGE": "t1"}
    for declared in (f"edge=https://10.0.0.5:8765#SHA256={pin.upper()}", f"edge=https://10.0.0.5:8765#sha256={colons}"):
        agent = load_agents([declared], environ=tokens)["edge"]
        assert (agent.url, agent.cert_sha256) == ("https://10.0.0.5:8765", pin), declared
    for declared in (f"edge=https://10.0.0.5:8765#sha256:{pin}", "edge=https://10.0.0.5:8765#frag",
                     "edge=https://10.0.0.5:8765/?x=1", f"edge=https://10.0.0.5:8765#sha256={pin}#x"):
        with pytest.raises(ValueError, match="no query and no fragment|#sha256= takes"):
            load_agents([declared], environ=tokens)
    profile = DeviceProfile.from_dict({"name": "e", "where": {"kind": "agent", "url": "https://h:1",
                                                              "cert_sha256": colons}})
    assert profile.where.cert_sha256 == pin
    for url in ("https://h:1#sha256=" + pin, "https://h:1/?a=b"):
        with pytest.raises(ProfileError, match="where.url.*no query or fragment"):
            DeviceProfile.from_dict({"name": "e", "where": {"kind": "agent", "url": url}})


#: The trust settings ``openssl x509 -trustout -addtrust serverAuth`` appends to a certificate's DER.
SERVER_AUTH_TRUST = bytes.fromhex("300c300a06082b06010505070301")


def test_the_printed_pin_is_the_served_certificates_in_a_trusted_certificate_file(tmp_path: Path) -> None:
    """A ``TRUSTED CERTIFICATE`` block, which OpenSSL serves, stopped the agent with a traceback after it listened."""
    import base64

    from devices.agent import certificate_sha256

    cert, key = self_signed_certificate(tmp_path)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    body = base64.encodebytes(der + SERVER_AUTH_TRUST).decode()
    trusted = tmp_path / "trusted.pem"
    trusted.write_text(f"-----BEGIN TRUSTED CERTIFICATE-----\n{body}-----END TRUSTED CERTIFICATE-----\n")
    served = TlsListener(trusted, key)  # loads as the agent's context does
    try:
        assert certificate_sha256(trusted) == served_sha256(served.port) == hashlib.sha256(der).hexdigest()
    finally:
        served.close()
    assert certificate_sha256(key) is None, "a file without a certificate is no pin"
