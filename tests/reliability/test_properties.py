"""Bad input to every public op, both routes (issue 10): hypothesis runs of the property in
cases.py, each group of ops in its own subprocess so that a segfault or an abort fails that
group's test, and a timeout catches a hang.

``FASTMTL_PROPERTY_EXAMPLES`` (default 60 per op and route) makes a larger run; ``FASTMTL_SEED``
replaces the fixed (derandomized) run with a seeded random one. The number of cases tried is
printed at the end of the pytest run (tests/reliability/conftest.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability import conftest
from tests.reliability.cases import GROUPS
from tests.utils import compiled_only

pytestmark = compiled_only

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("FASTMTL_PROPERTY_EXAMPLES", "60"))
TIMEOUT = 120 + 6 * EXAMPLES  # s per group: a hang fails, a slow machine does not


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_bad_input_property(group, tmp_path):
    counts = tmp_path / "counts.jsonl"
    env = {
        **os.environ,
        "FASTMTL_PROPERTY_COUNTS": str(counts),
        "FASTMTL_PROPERTY_OPS": ",".join(GROUPS[group]),
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header"]
    cmd += [str(ROOT / "tests/reliability/props_run.py")]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"group {group} hung (no result in {TIMEOUT} s):\n{(e.stdout or b'')[-4000:]!r}")
    tried = 0
    if counts.exists():
        for line in counts.read_text().splitlines():
            c = json.loads(line)
            tried += c.get("cases", 0)
            for k, v in c.items():
                conftest.TOTALS[k] += v
    if proc.returncode < 0:
        pytest.fail(
            f"group {group} crashed (signal {-proc.returncode}):\n{proc.stdout[-6000:]}{proc.stderr[-3000:]}"
        )
    assert proc.returncode == 0, f"group {group}:\n{proc.stdout[-12000:]}{proc.stderr[-3000:]}"
    assert tried > 0, proc.stdout[-3000:]
