"""A store URL's secrets are kept out of the process's log records and warnings, whoever writes them.

The plug-in's own path through a real CLI and a real service is in
``tests/test_store_plugins.py``; here, each way a record can carry a secret,
in a fresh process (the screen is process-wide once installed).  Y7 found
the ways marked so past the first version.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SECRET = "S3cr%2fet-pw"  # written percent-encoded: a driver logs it decoded, or encoded again its own way
SECRETS = (SECRET, "S3cr/et-pw", "S3cr%2Fet-pw", "t\u00f6k-98765", "tök-98765")
# An @ in the query too (Y8: the password then ran into the query, and went unscreened alone)
URL = (f"pg://root:{SECRET}@db.example/x?sslmode=require&application_name=hwsearch&authSource=admin&token=tök-98765"
       "&notify=ops@example.com")

_LOGS_EVERY_WAY = f"""
import json, logging, sys, threading, traceback, warnings
from urllib.parse import quote
from hwsearch.log_screen import keep_out_of_logs
from hwsearch.store_urls import credential_forms

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
before = logging.getLogger("early")  # a logger made before the screen screens too
with warnings.catch_warnings():  # Y7: the first opening inside one, as in a job's export
    keep_out_of_logs(credential_forms({URL!r}))
log = logging.getLogger("driver.pool")
log.warning("connecting to %s", {URL!r})
log.info("token %(token)s", {{"token": "tök-98765"}})
log.info("json %s", json.dumps({{"token": "tök-98765"}}))  # Y8: t\\u00f6k
before.error("password " + {SECRETS[1]!r})
log.warning("encoded again %s", quote({SECRETS[1]!r}, safe=""))  # Y7
try:
    raise OSError("refused for " + {URL!r})
except OSError:
    log.exception("first try failed")
    log.error("careless %s %s", "x")  # Y7: the handler's own failure printed the error being handled
log.warning("careless %s %s", {SECRETS[1]!r})  # arguments that do not fit: logging quotes them
log.warning("stack", stack_info=True)

class Everything(logging.Formatter):  # Y7: reads extra fields, builds the traceback itself, with its locals
    def format(self, record):
        said = f"{{record.getMessage()}} dsn={{getattr(record, 'dsn', '')}}"
        if record.exc_info:
            said += "".join(traceback.TracebackException(*record.exc_info, capture_locals=True).format())
        return "json " + said

handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(Everything())
structured = logging.getLogger("structured")
structured.addHandler(handler)
structured.propagate = False
structured.warning("connected", extra={{"dsn": {URL!r}}})
def connect(dsn):
    raise ConnectionError("reset")
try:
    connect({URL!r})
except ConnectionError:
    structured.exception("lost")
handler.handle(logging.makeLogRecord({{"msg": "from a queue " + {URL!r}, "levelno": 30}}))  # Y7
log.warning("harmless words stay: root, require, hwsearch, admin")

class OwnFields(logging.Handler):  # Y8: writes its record's extra fields itself, never formatting
    def emit(self, record):
        sys.stderr.write(f"own fields dsn={{record.dsn}}\\n")

own = logging.getLogger("own")
own.addHandler(OwnFields())
own.propagate = False
own.warning("x", extra={{"dsn": {URL!r}}})

class Connection:  # Y8: an error in __del__ is reported by Python itself
    def __del__(self):
        raise ConnectionError("could not close " + {URL!r})

Connection()

warnings.warn("unencrypted " + {URL!r})

def reconnect():
    raise ConnectionError("reconnect failed for " + {URL!r})

worker = threading.Thread(target=reconnect, name="driver-keepalive")
worker.start()
worker.join()
raise RuntimeError("gave up on " + {SECRETS[1]!r})
"""


def test_every_log_record_and_warning_of_the_process_is_screened() -> None:
    result = subprocess.run([sys.executable, "-c", _LOGS_EVERY_WAY], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stderr  # the last error, raised on purpose, was not caught
    said = result.stderr
    for secret in (*SECRETS, URL):
        assert secret not in said, said
    for line in ("driver.pool WARNING connecting to <hidden>", "driver.pool INFO token <hidden>",
                 "early ERROR password <hidden>", "encoded again <hidden>", "OSError: refused for <hidden>",
                 "--- Logging error ---", "Arguments: (\"('<hidden>',)\",)", "json connected dsn=<hidden>",
                 "dsn = '<hidden>'", "json from a queue <hidden>", "driver.pool INFO json {\"token\": \"<hidden>\"}",
                 "harmless words stay: root, require, hwsearch, admin", "own fields dsn=<hidden>",
                 "ConnectionError: could not close <hidden>",
                 "UserWarning: unencrypted <hidden>", "Exception in thread driver-keepalive:",
                 "ConnectionError: reconnect failed for <hidden>", "RuntimeError: gave up on <hidden>"):
        assert line in said, said


# Eight threads, each with a handler of its own, whose records' arguments do not fit: each failure report is
# written to a buffer in place of stderr for a moment.
_FAILING_HANDLERS_IN_THREADS = """
import logging, sys, threading
from hwsearch.log_screen import keep_out_of_logs

keep_out_of_logs(["S3cret-pw-x"])

def fail_often(i):
    log = logging.getLogger(f"worker{i}")
    log.propagate = False
    log.addHandler(logging.StreamHandler(sys.__stderr__))
    for _ in range(300):
        log.error("careless %s %s", "x")

threads = [threading.Thread(target=fail_often, args=(i,)) for i in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("stderr still reaches the terminal", file=sys.stderr)
"""


def test_handlers_failing_at_once_in_threads_leave_stderr_as_it_was() -> None:
    """Two failure reports interleaved, each putting back the stderr it found, left a buffer in its place: every
    later line the process wrote to stderr was lost (3 of 3 runs)."""
    result = subprocess.run([sys.executable, "-c", _FAILING_HANDLERS_IN_THREADS], capture_output=True, text=True,
                            timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.rstrip().endswith("stderr still reaches the terminal"), result.stderr[-2000:]


def test_a_failing_handler_in_a_process_without_stderr_says_nothing_and_fails_nothing() -> None:
    """Without stderr (pythonw, a daemon), a handler's failure raised from the logging call (Y8)."""
    script = ("import logging, sys\nfrom hwsearch.log_screen import keep_out_of_logs\n"
              "keep_out_of_logs(['S3cret-pw-x'])\nlog = logging.getLogger('x')\n"
              "log.addHandler(logging.StreamHandler(sys.stdout))\nsys.stderr = None\n"
              "log.error('careless %s %s', 'x')\nprint('the call returned')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and "the call returned" in result.stdout, result.stdout + result.stderr


def test_text_without_a_secret_is_left_as_it_was() -> None:
    from hwsearch.log_screen import screened

    assert screened("connecting to db.example as me") == "connecting to db.example as me"


def test_an_error_quoting_the_password_of_a_url_with_an_at_sign_in_its_query_is_known_as_such() -> None:
    """Read up to the last @ of the whole URL, the password ran into the query: a store error quoting it alone was
    shown, in a 503's answer too (Y8)."""
    from hwsearch.store_urls import quotes_a_secret_of

    assert quotes_a_secret_of("server closed for password pw-Secret9", "pg://me:pw-Secret9@db/x?notify=ops@e.com")
    assert quotes_a_secret_of("auth failed for pw/x#y", "urlfile://me:pw/x#y@localhost/rows.db")  # unparsable


def test_the_values_of_a_urls_semicolon_parameters_are_secrets_and_the_url_is_not_shown() -> None:
    """SQL Server's and JDBC's form, ``host;user=sa;password=...``, holds no ``@``, ``?`` or ``#``: it was shown
    whole in messages and 503 answers, and an error quoting its password alone passed the screen (Y17)."""
    from hwsearch.store_urls import credential_forms, quotes_a_secret_of, shown_store

    url = "mssql://db.example:1433;databaseName=jobs;user=sa;password=Sup3r-Secret"
    assert shown_store(url) == "mssql://..."
    assert quotes_a_secret_of("Login failed for user 'sa' with password 'Sup3r-Secret'", url)
    assert "Sup3r-Secret" in credential_forms(url)  # kept out of logs; the database's name is a word of any line
    assert "jobs" not in credential_forms(url)
    assert shown_store("mssql://db.example:1433/jobs") == "mssql://db.example:1433/jobs"


@pytest.mark.parametrize("url, password", [
    ("sqlserver://h:1433;databaseName=d; Password = S3cretPW", "S3cretPW"),  # spaces around the =
    ("db2://h:50000/db:password=S3cretPW;user=u;", "S3cretPW"),  # DB2's first parameter follows a colon
    ("odbc://h;UID=u;PWD={S3c;retPW}", "S3c;retPW"),  # ODBC's braces hold a ; of the password
    ("pg://h/db%3Bpassword%3DS3cretPW", "S3cretPW"),  # percent-encoded: shown whole before
    ("pg://h/db/password=S3cretPW", "S3cretPW"),  # a parameter in the path
    ("mssql://h;user=x;password=ab,cdefghij", "ab,cdefghij"),  # a comma inside the value: cut to "ab" (Y19)
])
def test_a_password_in_any_parameter_form_is_a_secret_and_hides_the_url(url: str, password: str) -> None:
    """Forms the first reading of ``;`` parameters missed: a driver's error quoting the password alone passed the
    screen into 503 answers and logs (Y18)."""
    from hwsearch.store_urls import credential_forms, quotes_a_secret_of, shown_store

    assert shown_store(url) == url.split("://")[0] + "://..."
    assert quotes_a_secret_of(f"login failed with password {password}", url)
    assert password in credential_forms(url)
