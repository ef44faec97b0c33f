"""The runnable examples run as a user runs them, and say what they found."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_search_library_example_finds_a_front_within_its_time_limit() -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "search_library.py"), "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"space \S+~r\d", out), "the example searches a restricted sub-space"
    stopped = re.search(r"stopped by max_seconds after \d+ generations: ([\d,]+) evaluations "
                        r"in ([\d.]+) s", out)
    assert stopped, out
    assert int(stopped.group(1).replace(",", "")) > 200 and float(stopped.group(2)) < 10
    best = re.search(r"best under 3 ms: accuracy ([\d.]+), ([\d.]+) ms", out)
    assert best and float(best.group(2)) <= 3.0, out
