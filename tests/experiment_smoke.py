"""Shared by the experiments' smoke tests: run one experiment's ``--preset smoke`` in a fresh process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_smoke(experiment: str, out: Path, *extra: str, timeout: int = 600, plain_host: bool = False) -> dict:
    """``experiments/<experiment>/run.py --preset smoke --out <out> <extra>``; its results.json.

    ``plain_host``: without the suite's forced host devices (one CPU device, as a user's machine)."""
    pytest.importorskip("torch")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if plain_host:
        env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / experiment / "run.py"), "--preset", "smoke",
                           "--out", str(out), *extra], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())
