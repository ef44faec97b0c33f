"""Settings every test process shares.

Ray must not write tokens into the home directory, and OpenMP threads must not
spin on this 2-core machine while other tests (or latency measurements) run.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Device calibrations go to a per-run folder, never the user's ~/.cache.
if "DEVICES_CALIBRATION_DIR" not in os.environ:
    import tempfile

    os.environ["DEVICES_CALIBRATION_DIR"] = tempfile.mkdtemp(prefix="hwsearch-calib-")
