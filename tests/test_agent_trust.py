"""What an edge agent says reaches the user as text, not as commands; what the client sends goes only to it.

Review findings: a hostile agent's error detail of terminal codes retitled and
cleared the user's terminal and overwrote the error with "all good" (the CLI's
error line, a job's record, the server's log); its rows' ``env`` was stored as
sent (terminal codes, ``</script>``, ``-Infinity``); a real agent put
``Infinity`` on the wire; the client sent the agent's token through a proxy set
in the environment for pip; and nothing warned that a token crossed the
network in clear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.client import AgentClient, AgentError
from devices.plain import NONFINITE_HEADER
from devices.profile import DeviceProfile
from hwsearch.agents import load_agents
from hwsearch.cli._errors import describe
from hwsearch.jobs.control import describe_error
from tests._listeners import Listener
from tests.test_agent_hardening import AUTH, MEASURING, TOKEN, RunningAgent, start_agent, tiny_model  # noqa: F401
from tests.test_cli_errors import run_cli
from tests.test_hostile_agent import HEALTH, HostileBox, corrupt_env, measure_against, send_json, well_formed_rows
from tests._tls import self_signed_certificate
from tests.test_untrusted_names import strict_json

HOSTILE_DETAIL = "\x1b]0;owned\x07\x1b[2J\rfake: all good\x08\x08 \u202eevil"
#: What must never reach a terminal from an agent: ESC, BEL, CR, BS and the right-to-left override.
RAW_CODES = ("\x1b", "\x07", "\r", "\x08", "\u202e")


@pytest.fixture(scope="module")
def box() -> Iterator[HostileBox]:
    running = HostileBox()
    yield running
    running.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two files the box is sent (it never parses them)."""
    folder = tmp_path_factory.mktemp("trust")
    paths = [folder / f"m{i}.onnx" for i in range(2)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * 1000)
    return paths


def refuse_with_detail(handler: Any, request: dict[str, Any]) -> None:
    send_json(handler, {"detail": HOSTILE_DETAIL}, status=400)


def assert_shown_not_obeyed(text: str) -> None:
    """No raw control code in ``text``, and the agent's codes visible in it, escaped."""
    assert not any(code in text for code in RAW_CODES), repr(text)
    assert "\\x1b]0;owned\\x07" in text and "\\u202eevil" in text, text


def test_an_agents_error_detail_is_shown_escaped(box: HostileBox, models: list[Path]) -> None:
    outcome, _ = measure_against(box, models, refuse_with_detail)
    assert isinstance(outcome, AgentError) and "answered HTTP 400" in str(outcome), outcome
    assert_shown_not_obeyed(str(outcome))
    assert_shown_not_obeyed(describe_error(outcome))  # what a job's record, and every client, shows


def test_the_cli_prints_an_agents_error_detail_as_text(box: HostileBox, tmp_path: Path) -> None:
    """``hwsearch measure`` wrote the agent's OSC, BEL, backspaces and RLO to stderr as they came."""
    box.answer, box.health = refuse_with_detail, HEALTH
    profile = tmp_path / "edge.json"
    profile.write_text(json.dumps({"name": "edge", "where": {
        "kind": "agent", "url": box.url, "token_env": "EDGE_TOKEN", "retries": 0}}))
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model(seed=3))
    result = run_cli("measure", "--device", str(profile), str(model), cwd=tmp_path,
                     extra_env={"EDGE_TOKEN": "edge-token-of-16-chars"})
    assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
    assert_shown_not_obeyed(result.stderr.rstrip("\n"))


def test_second_guards_escape_what_another_error_carries() -> None:
    """describe_error stripped only ``ESC [`` sequences and the CLI's line folded only whitespace."""
    job_line = describe_error(RuntimeError(HOSTILE_DETAIL))
    described = describe(OSError(HOSTILE_DETAIL))
    assert described is not None
    for line in (job_line, described[0]):
        assert not any(code in line for code in RAW_CODES) and "\\x1b]0;owned\\x07" in line, line


@pytest.mark.parametrize("said, shown", [
    ("GET https://10.0.0.5:8765/health failed after 4 attempts; last: ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] "
     "certificate verify failed: IP address mismatch, certificate is not valid for '10.0.0.5'. (_ssl.c:1006)",
     "GET <url> failed after 4 attempts; last: ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
     "failed: IP address mismatch, certificate is not valid for <host>. (_ssl.c:1006)"),
    ("Hostname mismatch, certificate is not valid for 'edge.lab.internal'.",
     "Hostname mismatch, certificate is not valid for <host>."),
    ("https://10.0.0.5:8765/: the agent's certificate has SHA-256 ab12",
     "<url>: the agent's certificate has SHA-256 ab12"),
    ("connect to 192.168.7.20:8765 and [fe80::1]:8765 refused", "connect to <address> and <address> refused"),
    ("3 of 8 rounds at 12:30:01 within 5.5 s, onnxruntime 1.23.2",
     "3 of 8 rounds at 12:30:01 within 5.5 s, onnxruntime 1.23.2"),
], ids=["openssl-ip", "openssl-name", "url-then-colon", "bare-addresses", "no-address"])
def test_a_jobs_error_names_no_agent_address(said: str, shown: str) -> None:
    """The URL was replaced, but OpenSSL's message named an unpinned agent's host, and the URL's pattern swallowed
    the colon after it; job errors are read by every client of the service."""
    assert describe_error(AgentError(said)) == f"AgentError: {shown}"


@pytest.mark.parametrize("field, value", [("note", "\x1b[31mRED</script>"), ("junk", -math.inf)],
                         ids=["unknown-text", "unknown-number"])
def test_env_fields_no_session_records_are_dropped_not_stored(box: HostileBox, models: list[Path], field: str,
                                                             value: Any) -> None:
    """A fake agent's env.note of terminal codes and </script>, and env.junk of -Infinity, were stored.

    Dropped rather than the row refused: a newer agent may record more than this client knows.
    """
    rows, _ = measure_against(box, models, corrupt_env(field, value))
    assert [m.latency_ms for m in rows] == [1.0, 2.0]
    assert all(field not in m.env for m in rows) and all("host_fingerprint" in m.env for m in rows)


def test_row_fields_no_session_records_are_dropped_not_stored(box: HostileBox, models: list[Path]) -> None:
    """A newer agent's extra percentile refused the whole measurement (``unexpected keyword argument``)."""
    def answer(handler: Any, request: dict[str, Any]) -> None:
        send_json(handler, {"measurements": [{**row, "p95_ms": 1.5, "extra": "\x1b[2J"}
                                             for row in well_formed_rows(request)]})

    rows, _ = measure_against(box, models, answer)
    assert [m.latency_ms for m in rows] == [1.0, 2.0]
    assert all(not hasattr(m, "p95_ms") and "extra" not in m.to_dict() for m in rows)


@pytest.mark.parametrize("answer, says", [
    (corrupt_env("cpu", "\x1b[2Jfake cpu"), "env.cpu is"),
    (corrupt_env("cpu", "x" * 1000), "env.cpu is"),
    (corrupt_env("providers", "CPUExecutionProvider"), "env.providers is"),
    (corrupt_env("input_shape", {"input": [1, "3"]}), "env.input_shape is"),
    (corrupt_env("lock_lost", "no"), "env.lock_lost is"),
    (corrupt_env("reference_drift", math.inf), "env.reference_drift is inf"),
], ids=["control-codes", "too-long", "not-a-list", "shape-of-text", "flag-not-bool", "infinite-number"])
def test_a_rows_env_holds_its_fields_only_as_a_session_records_them(box: HostileBox, models: list[Path],
                                                                    answer: Any, says: str) -> None:
    """Terminal codes, overlong text, wrong kinds and infinities in known env fields refuse the row."""
    outcome, _ = measure_against(box, models, answer)
    assert isinstance(outcome, AgentError) and says in str(outcome), outcome
    assert not any(code in str(outcome) for code in RAW_CODES)


def test_nulls_on_the_wire_mean_no_latency_and_no_ci(box: HostileBox, models: list[Path]) -> None:
    """A row that is not stable may have no latency (null) and no CI (null), as NaN and inf were before."""
    def answer(handler: Any, request: dict[str, Any]) -> None:
        rows = well_formed_rows(request)
        rows[1].update(latency_ms=None, ratio=None, ratio_ci=None, stable=False)
        send_json(handler, {"measurements": rows})

    rows, _ = measure_against(box, models, answer)
    assert math.isnan(rows[1].latency_ms) and math.isnan(rows[1].ratio) and rows[1].ratio_ci == math.inf


def test_agent_traffic_ignores_the_environments_proxy(box: HostileBox, models: list[Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy set for pip received ``Authorization: Bearer <agent token>`` and the models."""
    proxy = Listener()  # a proxy the client must not use
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    rows, _ = measure_against(box, models, lambda h, r: send_json(h, {"measurements": well_formed_rows(r)}))
    assert [m.latency_ms for m in rows] == [1.0, 2.0] and proxy.received == []
    proxy.close()


def test_a_real_agents_answer_is_standard_json_and_a_missing_ci_reads_back_as_inf(
        start_agent: Callable[..., RunningAgent], tmp_path: Path) -> None:  # noqa: F811
    """Five rounds make no CI (ratio_ci inf): the agent answered ``Infinity``, which JSON.parse refuses.

    Only to a client that asks for standard JSON: a service from before reads ``Infinity`` and
    refuses a null, so without the header the answer stays as it was.
    """
    agent = start_agent(*MEASURING)
    profile = DeviceProfile.from_dict({
        "name": "edge", "warmup": {"runs": 2, "seconds": 0.2},
        "protocol": {"min_rounds": 5, "max_rounds": 5, "max_seconds": 10},
        "where": {"kind": "agent", "url": agent.url, "token_env": "EDGE_TOKEN", "retries": 0}})
    model, reference = tiny_model(seed=7), profile.reference_bytes()
    shas = [hashlib.sha256(body).hexdigest() for body in (reference, model)]
    for sha, body in zip(shas, (reference, model)):
        assert httpx.put(f"{agent.url}/models/{sha}", content=body, headers=AUTH, timeout=60).status_code < 300
    answers = [httpx.post(f"{agent.url}/measure", headers=headers, timeout=120, json={
        "request_id": uuid.uuid4().hex, "profile": profile.to_dict(), "reference_sha256": shas[0],
        "model_sha256s": [shas[1]]}) for headers in ({**AUTH, NONFINITE_HEADER: "null"}, AUTH)]
    assert [answer.status_code for answer in answers] == [200, 200], answers[-1].text
    [row] = strict_json(answers[0].text)["measurements"]
    assert row["ratio_ci"] is None and row["stable"] is False
    [old_clients_row] = json.loads(answers[1].text)["measurements"]  # Python's reader, as a service from before
    assert old_clients_row["ratio_ci"] == math.inf and '"ratio_ci": Infinity' in answers[1].text
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(model)
    [measured] = AgentClient(profile, token=TOKEN).measure_many([model_path])  # a real env passes the checks
    assert measured.ratio_ci == math.inf and not measured.stable and measured.median_ms > 0


@pytest.mark.parametrize("url, warned", [
    ("http://10.1.2.3:8765", True), ("http://edge.example:8765", True), ("https://10.1.2.3:8765", False),
    ("http://127.0.0.1:8765", False), ("http://[::1]:8765", False), ("http://localhost:8765", False)])
def test_declaring_an_agent_over_plain_http_off_this_machine_warns(caplog: pytest.LogCaptureFixture,
                                                                   url: str, warned: bool) -> None:
    with caplog.at_level(logging.WARNING, logger="hwsearch.agents"):
        load_agents([f"edge={url}"], environ={"HWSEARCH_AGENT_TOKEN_EDGE": "secret"})
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert bool(warnings) == warned, warnings
    assert all("edge" in w and "in clear" in w and "secret" not in w for w in warnings)


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_an_agent_serving_plain_http_off_loopback_warns(tmp_path: Path, host: str, warned: bool) -> None:
    """``--host 0.0.0.0`` without TLS printed only "listening on http://0.0.0.0:...", as ``hwsearch serve`` warns."""
    process = subprocess.Popen(
        [sys.executable, "-m", "devices.agent", "--host", host, "--port", "0", "--state-dir", str(tmp_path)],
        env={**os.environ, "DEVICES_AGENT_TOKEN": "a-token-of-16-chars",
             "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("listening on" in line for line in lines):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
    finally:
        process.kill()
        process.wait(timeout=30)
    said = "".join(lines)
    assert ("warning: serving plain HTTP" in said and "crosses the network in clear" in said) == warned, said


def test_without_ssl_cert_settings_agents_are_checked_against_certifis_bundle(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    """httpx's own default, kept when the client stopped reading the environment (some Pythons have no system CAs).

    ``SSL_CERT_FILE`` still names a self-signed agent's certificate instead.
    """
    import certifi

    from devices.client import _verification

    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    bundle = certifi.where()
    assert len(_verification().get_ca_certs()) == Path(bundle).read_text().count("BEGIN CERTIFICATE") > 100
    cert, _ = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert len(_verification().get_ca_certs()) == 1


SECRET = "tok-AAA-secret-123"


@pytest.mark.parametrize("token", [SECRET + "\n", SECRET + " ", "tok\u00f8" + SECRET, " "],
                         ids=["newline", "trailing-space", "non-ascii", "blank"])
def test_an_agent_token_no_header_can_carry_is_refused_without_quoting_it(tmp_path: Path, token: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A token ending in a newline (a secrets file written with echo) was sent, refused by httpx, and its message,
    token included, became the job's error that every client of the service reads; the agent served " "."""
    profile = DeviceProfile.from_dict({"name": "edge", "where": {"kind": "agent", "url": "http://127.0.0.1:9",
                                                                  "token_env": "EDGE_TOKEN"}})
    monkeypatch.setenv("EDGE_TOKEN", token)
    with pytest.raises(AgentError, match="the agent token in EDGE_TOKEN .* must be printable ASCII") as raised:
        AgentClient(profile)
    (tmp_path / "secrets.json").write_text(json.dumps({"edge": token}))
    with pytest.raises(ValueError, match="agent 'edge': its token in the secrets file must be printable") as declared:
        load_agents(["edge=http://127.0.0.1:9"], secrets_file=tmp_path / "secrets.json")
    agent = subprocess.run([sys.executable, "-m", "devices.agent", "--port", "0", "--state-dir", str(tmp_path)],
                           env={**os.environ, "DEVICES_AGENT_TOKEN": token,
                                "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                           capture_output=True, text=True, timeout=60)
    assert agent.returncode == 2 and "the agent's token (--token or DEVICES_AGENT_TOKEN) must be" in agent.stderr
    for said in (str(raised.value), str(declared.value), agent.stderr):
        assert token.strip() not in said or not token.strip(), said


def test_an_agent_refuses_a_token_short_enough_to_guess(tmp_path: Path) -> None:
    """``DEVICES_AGENT_TOKEN=t`` was served: every request is answered, so one character falls to a few guesses.

    Fifteen characters are refused at start without being quoted; sixteen are served.
    """
    def start(token: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "devices.agent", "--port", "0", "--state-dir", str(tmp_path)],
                                env={**os.environ, "DEVICES_AGENT_TOKEN": token,
                                     "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    refused = start("s3cret-15-chars")
    try:
        said, _ = refused.communicate(timeout=60)
    finally:  # an agent that served the short token would run on after the test
        refused.kill()
        refused.wait(timeout=30)
    assert refused.returncode == 2, said
    assert "the agent's token (--token or DEVICES_AGENT_TOKEN) is shorter than the 16 characters" in said, said
    assert "s3cret" not in said
    state = tmp_path / "new-state"  # hwsearch agent made its --state-dir before refusing the token
    cli = subprocess.run([sys.executable, "-m", "hwsearch.cli.main", "agent", "--port", "0", "--state-dir",
                          str(state)], env={**os.environ, "DEVICES_AGENT_TOKEN": "s3cret-15-chars"},
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "is shorter than the 16 characters" in cli.stderr, cli.stderr[-2000:]
    assert not state.exists() and "s3cret" not in cli.stderr
    served = start("s3cret-16-chars!")
    try:
        lines: list[str] = []
        while not any("listening on" in line for line in lines):  # a warning may come first
            line = served.stdout.readline()
            assert line, "".join(lines)  # the agent ended
            lines.append(line)
        url = next(line for line in lines if "listening on" in line).split("listening on ", 1)[1].split()[0]
        url = url.rstrip("/")
        assert httpx.get(f"{url}/health", headers={"Authorization": "Bearer s3cret-16-chars!"},
                         timeout=10).status_code == 200
    finally:
        served.kill()
        served.wait(timeout=30)


@pytest.mark.parametrize("options, says", [
    (["--state-dir", "/etc/passwd"], "error: --state-dir /etc/passwd: Not a directory"),
    (["--port", "70000"], "error: cannot listen on 127.0.0.1:70000 (--host, --port): "),
    (["--host", "192.0.2.1", "--port", "8765"],
     "error: cannot listen on 192.0.2.1:8765 (--host, --port): Cannot assign"),
    (["--port", "in-use"], "error: cannot listen on 127.0.0.1:"),
], ids=["state-dir-a-file", "port-out-of-range", "not-this-boxs-address", "port-in-use"])
def test_the_agent_on_an_edge_box_refuses_a_start_in_one_line(tmp_path: Path, options: list[str], says: str) -> None:
    """python -m devices.agent, as an edge box runs it, printed a 19-line traceback for a port in use."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        options = [str(busy.getsockname()[1]) if option == "in-use" else option for option in options]
        if "--state-dir" not in options:
            options += ["--state-dir", str(tmp_path / "state")]
        agent = subprocess.run([sys.executable, "-m", "devices.agent", *options],
                               env={**os.environ, "DEVICES_AGENT_TOKEN": TOKEN,
                                    "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                               capture_output=True, text=True, timeout=60)
    lines = agent.stderr.strip().splitlines()
    assert agent.returncode == 2 and len(lines) == 1 and lines[0].startswith(says), agent.stderr[-2000:]
