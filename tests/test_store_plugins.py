"""Another store backend for the CLI and the service: a package's ``hwsearch.stores`` entry point, named by URL.

Probe Z9 found the library and ``create_app`` took any store, but the CLI
and ``hwsearch serve`` only a SQLite path.  A store URL (``scheme://...``)
is now opened by the installed package that registered its scheme.  The
package here is real (its ``.dist-info`` as pip writes it, on PYTHONPATH);
its backend keeps rows in a SQLite file named by the URL's path and checks
a password, so a test can see that the URL reached it and that no message
shows the password.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

from hwsearch.store import SQLiteStore, Store, StoreFailed
from hwsearch.store_urls import open_store_url
from hwsearch.testing import StoreContract
from tests._jobs import fast_device, random_dataset
from tests._server import Server
from tests.test_api_job import run_one_device_job
from tests.test_cli_errors import TOKEN, assert_one_line_error, run_cli

PASSWORD = "pw-that-must-not-leak"

PLUGIN_STORE = textwrap.dedent(f'''
    """A backend of its own for the tests: a SQLite file named by a URL that carries a password."""
    import os
    from urllib.parse import unquote, urlsplit

    from hwsearch.store import SQLiteStore


    class URLFileStore(SQLiteStore):
        """Rows in the file the URL's path names; job ``lost-<kind>`` fails as a careless driver would, and
        every latency written while ``URLSTORE_LOSE_WRITES`` is set."""

        def __reduce__(self):  # a copy opens the same URL, as a driver's store would
            return open_url, (self.url,)

        def get_job(self, job_id):
            password = urlsplit(self.url).password
            if job_id == "lost-key":
                raise KeyError(f"no job here for {{unquote(password)}}")
            if job_id == "lost-group":
                raise ExceptionGroup("several hosts failed", [ConnectionError(f"auth failed for {{password}}")])
            if job_id == "lost-bytes":
                raise ConnectionError(f"auth failed: {{unquote(password).encode('latin-1')!r}}")
            if job_id == "lost-basic":
                import base64
                raise ConnectionError("sent Authorization: Basic "
                                      + base64.b64encode(unquote(urlsplit(self.url).netloc.rsplit("@", 1)[0]).encode())
                                      .decode())
            if job_id == "lost-cancelled":
                import asyncio
                raise asyncio.CancelledError(f"cancelled talking to {{self.url}}")
            if job_id == "lost-chained":
                try:
                    raise OSError(f"authentication failed for {{unquote(password)}}")
                except OSError:
                    raise ConnectionError("connection lost")
            if job_id.startswith("lost-"):
                quoted = {{"url": self.url, "password": password, "decoded": unquote(password),
                           "nothing": "peer reset"}}[job_id.removeprefix("lost-")]
                raise ConnectionError(f"connection lost: {{quoted}}")
            return super().get_job(job_id)

        def recent_jobs(self, limit, before=None):
            if os.environ.get("URLSTORE_OLD_PAGING") and before is not None:  # looks ``before`` up as a job's id
                raise KeyError(before)
            return super().recent_jobs(limit, before)

        def put_latency(self, *args, **kwargs):
            if os.environ.get("URLSTORE_LOSE_WRITES"):
                raise ConnectionError(f"write lost on {{self.url}}")
            return super().put_latency(*args, **kwargs)


    def open_url(url):
        if os.environ.get("URLSTORE_LOSE_COPIES"):
            raise ConnectionError(f"could not reconnect to {{url}}")
        parts = urlsplit(url)
        if os.environ.get("URLSTORE_CHATTY"):  # a driver that logs and warns with its connection string
            import logging
            import warnings
            log = logging.getLogger("urlstore")
            log.warning("connecting to %s", url)
            warnings.warn(f"{{url}} is not encrypted")
            try:
                raise OSError(f"first try refused for {{unquote(parts.password)}}")
            except OSError:
                log.exception("retrying once")
        if unquote(parts.password or "") != {PASSWORD!r}:
            raise PermissionError(f"login refused for {{url}}")
        store = URLFileStore(parts.path)
        store.url = url
        return store
''')


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """The plug-in, installed as pip would: its package and its ``.dist-info`` with the entry point."""
    root = tmp_path / "site"
    (root / "urlstore").mkdir(parents=True)
    (root / "urlstore" / "__init__.py").write_text(PLUGIN_STORE)
    info = root / "urlstore-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: urlstore\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hwsearch.stores]\nurlfile = urlstore:open_url\n")
    return root


def url(path: Path, password: str = PASSWORD) -> str:
    return f"urlfile://me:{password}@localhost{path}"


def latency_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM latencies").fetchone()[0])


class TestThePluginStoreKeepsTheContract(StoreContract):
    """The kit a backend's author runs (:mod:`hwsearch.testing.store_contract`), on a store opened by its URL."""

    @pytest.fixture()
    def store(self, site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
        monkeypatch.syspath_prepend(str(site))
        return open_store_url(url(tmp_path / "contract.db"))


def test_a_plugin_stores_failures_are_store_errors_that_never_quote_its_urls_secrets(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver's error can quote its connection string in any call, long after the store opened: report screened
    it, profile, train and the service did not.  A password written percent-encoded in the URL is quoted decoded
    by the driver; one error raised during another carries the first along."""
    monkeypatch.syspath_prepend(str(site))
    encoded = PASSWORD.replace("-", "%2D", 1)
    store = open_store_url(url(tmp_path / "s.db", encoded))
    raised = {"group": "ExceptionGroup", "cancelled": "CancelledError"}  # the rest: ConnectionError
    for quoted in ("url", "password", "decoded", "chained", "group", "bytes", "basic", "cancelled"):
        with pytest.raises(StoreFailed) as caught:
            store.get_job(f"lost-{quoted}")
        told = "".join(traceback.format_exception(caught.value))
        assert f"get_job: {raised.get(quoted, 'ConnectionError')}: its message is not shown" in str(caught.value)
        assert PASSWORD not in told and encoded not in told, told
    with pytest.raises(StoreFailed, match="get_job: ConnectionError: connection lost: peer reset"):
        store.get_job("lost-nothing")  # nothing secret: the driver's own words
    with pytest.raises(KeyError):
        store.get_job("no-such-job")  # the store contract's own error passes as it is
    with pytest.raises(KeyError) as caught:
        store.get_job("lost-key")  # and keeps its kind when it quotes a secret, which it then does not
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))
    copy = pickle.loads(pickle.dumps(store))  # as Ray's workers receive it
    with pytest.raises(StoreFailed):
        copy.get_job("lost-password")
    assert PASSWORD not in repr(store) + repr(copy)
    monkeypatch.setenv("URLSTORE_LOSE_COPIES", "1")  # the copy's reopening fails, quoting the URL (Y6)
    with pytest.raises(StoreFailed, match="reopening a copy: ConnectionError") as caught:
        pickle.loads(pickle.dumps(store))
    assert PASSWORD not in "".join(traceback.format_exception(caught.value))


def test_profile_writes_its_rows_to_a_plugin_store_named_in_the_environment(site: Path, tmp_path: Path) -> None:
    """``HWSEARCH_STORE`` keeps the password off the command line, where every user's ``ps`` shows it."""
    profile = tmp_path / "dev.json"
    profile.write_text(json.dumps(fast_device("cpu")))
    rows = tmp_path / "rows.db"
    result = run_cli("profile", "--device", str(profile), "--supernet", "demo_mbv3_mnist", "--n", "4", "--json",
                     cwd=tmp_path, extra_env={"PYTHONPATH": str(site), "HWSEARCH_STORE": url(rows),
                                              "URLSTORE_CHATTY": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["measured"] == 4 and latency_rows(rows) == 4
    assert report["store"] == "urlfile://..."
    assert PASSWORD not in result.stdout + result.stderr, result.stderr
    # The plug-in's own log lines, warning and logged traceback are shown, screened (they printed the password).
    for said in ("connecting to <hidden>", "<hidden> is not encrypted", "OSError: first try refused for <hidden>"):
        assert said in result.stderr, result.stderr
    lost = run_cli("profile", "--device", str(profile), "--supernet", "demo_mbv3_mnist", "--n", "4", cwd=tmp_path,
                   extra_env={"PYTHONPATH": str(site), "HWSEARCH_STORE": url(tmp_path / "lost.db"),
                              "URLSTORE_LOSE_WRITES": "1"})
    last = lost.stderr.strip().splitlines()[-1]  # after any "waiting for local host" line of a busy host
    assert lost.returncode == 1 and "Traceback" not in lost.stderr, lost.stderr  # the work failed, not the input
    assert last.startswith("error: the urlfile:// store failed in put_latency: ConnectionError") and "not shown" in last
    assert PASSWORD not in lost.stdout + lost.stderr, last


# Where a URL carries a secret (probe Y4 found each printed by the first version, which hid a parsed password only).
SECRET_FORMS = {
    "password": "urlfile://me:{pw}@localhost/{path}",
    "query": "urlfile://localhost/{path}?password={pw}",
    "token as user": "urlfile://{pw}@localhost/{path}",
    "password with / and #": "urlfile://me:{pw}/x#y@localhost/{path}",
    "unparsable": "urlfile://me:{pw}@[localhost/{path}",
    "; parameter": "urlfile://localhost/{path};password={pw}",  # SQL Server's form (Y17: shown whole)
}


@pytest.mark.parametrize("form", SECRET_FORMS)
def test_a_store_url_that_cannot_be_opened_is_one_line_without_its_secret(site: Path, tmp_path: Path,
                                                                          form: str) -> None:
    profile = tmp_path / "dev.json"
    profile.write_text(json.dumps(fast_device("cpu")))
    given = SECRET_FORMS[form].format(pw="wrong-" + PASSWORD, path=str(tmp_path / "rows.db").lstrip("/"))
    refused = run_cli("profile", "--device", str(profile), "--supernet", "demo_mbv3_mnist", "--n", "4",
                      "--store", given, cwd=tmp_path, extra_env={"PYTHONPATH": str(site)})
    line = assert_one_line_error(refused, 2, "--store", "urlfile://", "Error")
    assert PASSWORD not in refused.stderr + refused.stdout, line
    assert not (tmp_path / "rows.db").exists()


def test_store_urls_that_cannot_hold_secrets_are_shown_and_near_misses_refused(site: Path, tmp_path: Path) -> None:
    profile = tmp_path / "dev.json"
    profile.write_text(json.dumps(fast_device("cpu")))
    env = {"PYTHONPATH": str(site)}
    common = ("profile", "--device", str(profile), "--supernet", "demo_mbv3_mnist", "--n", "4")
    plain = f"urlfile://localhost{tmp_path / 'rows.db'}"
    refused = run_cli(*common, "--store", plain, cwd=tmp_path, extra_env=env)
    assert_one_line_error(refused, 2, "--store", "PermissionError: login refused for " + plain)
    unknown = run_cli(*common, "--store", f"nosuch://me:{PASSWORD}@host/db", cwd=tmp_path, extra_env=env)
    line = assert_one_line_error(unknown, 2, "--store", "nosuch://", "urlfile")
    assert PASSWORD not in line
    for near_miss in (f"urlfile:/me:{PASSWORD}@localhost/x.db", f" urlfile://me:{PASSWORD}@localhost/x.db"):
        refused = run_cli(*common, "--store", near_miss, cwd=tmp_path, extra_env=env)
        line = assert_one_line_error(refused, 2, "--store", "begins as a store URL does")
        assert PASSWORD not in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dev.json", "site"]  # no folder named after a URL


def test_train_refuses_a_store_file_that_is_not_there(tmp_path: Path) -> None:
    result = run_cli("train", "--out", str(tmp_path / "model"), "--target", "accuracy", "--dataset-id", "x",
                     "--store", str(tmp_path / "missing.db"), cwd=tmp_path)
    assert_one_line_error(result, 2, "--store", "missing.db", "not a store file")
    assert not (tmp_path / "missing.db").exists()


def test_serve_needs_a_data_dir_for_a_store_given_by_url(site: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hwsearch.cli.main", "serve", "--store", url(tmp_path / "s.db"),
                             "--token", TOKEN], env={**_env(site), "RAY_AUTH_MODE": "disabled"},
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_one_line_error(result, 2, "--data-dir")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["site"]  # no store, no data directory


def test_a_plugin_store_written_for_paging_by_job_id_is_a_503_that_says_so(site: Path, tmp_path: Path) -> None:
    """``recent_jobs`` took a job's id before it took a :class:`~hwsearch.store.JobPlace`; such a plug-in looking
    a place up raised KeyError, which the service answered with a 500 (Y16)."""
    rows = tmp_path / "rows.db"
    for _ in range(2):
        SQLiteStore(rows).create_job({"kind": "search"})
    env = {"PYTHONPATH": str(site), "URLSTORE_OLD_PAGING": "1"}
    server = Server(tmp_path / "store.sqlite", store_url=url(rows), env=env,
                    extra=("--data-dir", str(tmp_path / "service-data"))).start()
    try:
        with server.client() as client:
            first = client.get("/jobs", params={"limit": 1})
            second = client.get("/jobs", params={"limit": 1, "before": first.json()["next_before"]})
    finally:
        server.stop()
    assert first.status_code == 200 and len(first.json()["jobs"]) == 1, first.text
    assert second.status_code == 503 and "recent_jobs refused a JobPlace" in second.text, second.text


@pytest.mark.slow
@pytest.mark.parametrize("factory", [False, True], ids=["serve", "factory"])
def test_a_service_runs_a_job_on_a_plugin_store(site: Path, tmp_path: Path, factory: bool) -> None:
    rows = tmp_path / "rows.db"
    data_dir = tmp_path / "service-data"
    env = {"PYTHONPATH": str(site), "URLSTORE_CHATTY": "1", **({"HWSEARCH_DATA": str(data_dir)} if factory else {})}
    extra = () if factory else ("--data-dir", str(data_dir))
    server = Server(tmp_path / "store.sqlite", store_url=url(rows), env=env, extra=extra, factory=factory).start()
    try:
        dataset = random_dataset(tmp_path / "val.npz")
        with server.client() as client:
            job = run_one_device_job(client, "demo_mbv3_mnist", dataset)
            assert job["state"] == "succeeded", job
            answers = [client.get(f"/jobs/lost-{quoted}") for quoted in ("url", "password")]  # the driver failing
    finally:
        server.stop()
    lost, said = [answer.status_code for answer in answers], " ".join(answer.text for answer in answers)
    assert PASSWORD not in said, said
    assert latency_rows(rows) >= 4 and (data_dir / "serve.lock").exists()
    assert lost == [503, 503] and "get_job: ConnectionError" in said, said
    assert not (tmp_path / "store.sqlite").exists()  # the file the test names is only where its logs go
    log = server.log.read_text()
    assert PASSWORD not in log and "connecting to <hidden>" in log, log[-3000:]
    if not factory:  # the commands read the store and the folder alone: one service is enough
        _read_back_from_the_command_line(site, tmp_path, rows, data_dir, job["id"])


def _read_back_from_the_command_line(site: Path, tmp_path: Path, rows: Path, data_dir: Path, job_id: str) -> None:
    """`report` reads the job from the plug-in store by its URL; `devices show` finds the service's device in its
    --data-dir (both took only a SQLite path), and `--store URL` alone says to give --data-dir, secret unshown."""
    plugin = {"PYTHONPATH": str(site)}
    report = run_cli("report", job_id, "--store", url(rows), "--out", str(tmp_path / "report"), cwd=tmp_path,
                     extra_env=plugin)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "report.html").is_file() and PASSWORD not in report.stdout + report.stderr
    missing = run_cli("report", "no-such-job", cwd=tmp_path, extra_env={**plugin, "HWSEARCH_STORE": url(rows)})
    assert PASSWORD not in assert_one_line_error(missing, 2, "no-such-job", "urlfile://...")
    for quoted in ("url", "password"):  # a driver's error quoting the URL, or only its password (Y5)
        lost = run_cli("report", f"lost-{quoted}", "--store", url(rows), cwd=tmp_path, extra_env=plugin)
        line = assert_one_line_error(lost, 1, "urlfile:// store failed in get_job: ConnectionError", "not shown")
        assert PASSWORD not in lost.stdout + lost.stderr, line
    shown = run_cli("devices", "show", "cpu", "--data-dir", str(data_dir), "--json", "--plain-runs", "5",
                    cwd=tmp_path, extra_env=plugin)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["device"] == "cpu"
    by_url = run_cli("devices", "show", "cpu", "--store", url(rows), cwd=tmp_path, extra_env=plugin)
    assert PASSWORD not in assert_one_line_error(by_url, 2, "--store", "--data-dir")
    both = run_cli("devices", "show", "cpu", "--store", url(rows), "--data-dir", str(data_dir), cwd=tmp_path,
                   extra_env=plugin)
    assert PASSWORD not in assert_one_line_error(both, 2, "not both")
    (data_dir / "devices" / "hollow.json").write_text("{}")  # a record the service never wrote
    hollow = run_cli("devices", "reset", "hollow", "--data-dir", str(data_dir), cwd=tmp_path)
    assert_one_line_error(hollow, 2, "hollow", "holds no profile", "PROFILE")


def _env(site: Path) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(site)}
