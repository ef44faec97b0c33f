"""A store URL's secrets are kept out of the process's log records and warnings, whoever writes them.

The plug-in's own path through a real CLI and a real service is in
``tests/test_store_plugins.py``; here, each way a record can carry a secret,
in a fresh process (the screen is process-wide once installed).
"""

from __future__ import annotations

import subprocess
import sys

SECRET = "S3cret-pw-x"
URL = f"pg://me:{SECRET}@db.example/x?token=tok-98765"

_LOGS_EVERY_WAY = f"""
import logging, sys, warnings
from hwsearch.log_screen import keep_out_of_logs
from hwsearch.store_urls import secret_forms

logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
before = logging.getLogger("early")  # a logger made before the screen screens too
keep_out_of_logs(secret_forms({URL!r}))
log = logging.getLogger("driver.pool")
log.warning("connecting to %s", {URL!r})
log.info("token %(token)s", {{"token": "tok-98765"}})
before.error("password " + {SECRET!r})
try:
    raise OSError("refused for " + {URL!r})
except OSError:
    log.exception("first try failed")
log.warning("careless %s %s", {SECRET!r})  # arguments that do not fit: logging quotes them
log.warning("stack", stack_info=True, extra={{"note": 1}})
warnings.warn("unencrypted " + {URL!r})

def reconnect():
    raise ConnectionError("reconnect failed for " + {URL!r})

import threading
worker = threading.Thread(target=reconnect, name="driver-keepalive")
worker.start()
worker.join()
raise RuntimeError("gave up on " + {SECRET!r})
"""


def test_every_log_record_and_warning_of_the_process_is_screened() -> None:
    result = subprocess.run([sys.executable, "-c", _LOGS_EVERY_WAY], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stderr  # the last error, raised on purpose, was not caught
    said = result.stderr
    for secret in (SECRET, "tok-98765", URL):
        assert secret not in said, said
    for line in ("driver.pool WARNING connecting to <hidden>", "driver.pool INFO token <hidden>",
                 "early ERROR password <hidden>", "OSError: refused for <hidden>",
                 "Arguments: (\"('<hidden>',)\",)", "UserWarning: unencrypted <hidden>",
                 "Exception in thread driver-keepalive:", "ConnectionError: reconnect failed for <hidden>",
                 "RuntimeError: gave up on <hidden>"):
        assert line in said, said


def test_text_without_a_secret_is_left_as_it_was() -> None:
    from hwsearch.log_screen import screened

    assert screened("connecting to db.example as me") == "connecting to db.example as me"
