"""Bad input to every public op, both routes (issue 10): hypothesis runs of the property in
cases.py, each group of ops in its own subprocess so that a segfault or an abort fails that
group's test, and a timeout catches a hang.

``FASTMTL_PROPERTY_EXAMPLES`` (default 100 per op and route) makes a larger run; ``FASTMTL_SEED``
replaces the fixed (derandomized) run with a seeded random one. The number of cases tried is
printed at the end of the pytest run (tests/reliability/conftest.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastmtl.ops as F
from fastmtl._ext import compiled_op_names
from tests.reliability import conftest
from tests.reliability.cases import GROUPS, SPECS
from tests.utils import compiled_only

pytestmark = compiled_only

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("FASTMTL_PROPERTY_EXAMPLES", "100"))
TIMEOUT = 90 + 2 * EXAMPLES  # s per group (about 4x a 2-core run): a hang fails, a slow machine does not


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


def test_every_public_op_is_in_the_suite():
    aliases = {"complete_box_iou_loss", "distance_box_iou_loss", "generalized_box_iou_loss"}
    functions = {n for n in F.__all__ if n[0].islower()} - aliases
    losses = {"dice_loss"}  # public functions outside fastmtl.ops
    assert functions | losses == {s.split("[")[0] for s in SPECS if s.endswith("[py]")}
    ops = {n.split("::")[1] for n in compiled_op_names() if not n.split("::")[1].startswith("_")}
    variants = {"triplet_margin_loss_hard": "triplet_margin_loss"}  # a second mode of one op
    assert ops == {variants.get(b, b) for b in (s.split("[")[0] for s in SPECS if s.endswith("[op]"))}
