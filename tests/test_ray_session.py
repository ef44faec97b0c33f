"""Ray started from a short-lived thread must outlive that thread.

Ray's local daemons die with the thread that started them (PR_SET_PDEATHSIG),
and a driver whose GCS is gone exits a minute later: this once took down the
demo, the CLI search and this test suite.  The check runs in a subprocess so a
regression fails this test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, threading, time
import ray
from hwsearch.ray_session import init_ray

starter = threading.Thread(target=init_ray, kwargs={"num_cpus": 1})
starter.start()
starter.join()
time.sleep(3)  # PDEATHSIG is immediate; give the kernel and Ray a moment to notice
node = ray._private.worker._global_node
dead = sorted({kind for kind, _ in node.dead_processes()})
answer = ray.get(ray.remote(lambda: 6 * 7).remote(), timeout=60) if not dead else None
print(json.dumps({"dead": dead, "answer": answer}))
ray.shutdown()
"""


def test_ray_started_from_a_finished_thread_keeps_running() -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"dead": [], "answer": 42}
