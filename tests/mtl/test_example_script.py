"""examples/mtl_ddp.py (the README's torchrun example) runs in one process, and resumes from its
checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "examples" / "mtl_ddp.py"), "--images", "8", "--size", "32", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=True).stdout


def test_example_trains_and_resumes(tmp_path):
    ckpt = tmp_path / "run.pt"
    out = _run("--steps", "3", "--batch-size", "4", "--checkpoint", str(ckpt), "--checkpoint-every", "3")
    assert "seg: loss" in out and "depth: loss" in out and ckpt.exists()
    resumed = _run("--steps", "4", "--batch-size", "4", "--checkpoint", str(ckpt), "--gradient", "pcgrad")
    assert "seg: loss" in resumed
