"""Two JAX processes (4 CPU devices each, jax.distributed on 127.0.0.1) assemble the same
global batches as one process with 8 devices, each process reading only its half."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from sae_jax.data import store as st
from sae_jax.data.loader import global_batch_rows

WORKER = Path(__file__).with_name("loader_multiprocess_worker.py")
BATCH, SEED, STEPS, N, D = 24, 7, 5, 40, 6


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assemble(npz_files):
    batches = {}
    for f in npz_files:
        rec = np.load(f)
        for key in rec.files:
            if key.endswith("_data"):
                step = int(key.split("_")[0][4:])
                start = int(rec[key.replace("_data", "_start")])
                out = batches.setdefault(step, np.full((BATCH, D), np.nan, np.float32))
                out[start : start + rec[key].shape[0]] = rec[key]
    return batches


def test_two_processes_assemble_the_single_process_batches(tmp_path):
    x = np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)
    path = str(tmp_path / "store")
    st.create_array(path, N, D, shard_rows=16).write(x).result()
    st.commit(path, {"n_rows": N, "d_model": D})
    repo = Path(__file__).resolve().parents[1]
    env_cmd = [sys.executable, str(WORKER), path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}

    single = tmp_path / "single.npz"
    subprocess.run(env_cmd + [str(single), "1", "0", "0", "8"], check=True, cwd=repo, env=env, timeout=120)
    port = str(_free_port())
    outs = [tmp_path / f"proc{i}.npz" for i in range(2)]
    procs = [subprocess.Popen(env_cmd + [str(outs[i]), "2", str(i), port, "4"], cwd=repo, env=env) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=180) == 0

    ranges = [tuple(np.load(f)["row_range"]) for f in outs]
    assert sorted(ranges) == [(0, 12), (12, 24)], ranges  # each process reads only its half
    expected = {s: x[global_batch_rows(SEED, s, BATCH, N)] for s in range(STEPS)}
    one, two = _assemble([single]), _assemble(outs)
    assert sorted(one) == sorted(two) == list(range(STEPS))
    for s in range(STEPS):
        np.testing.assert_array_equal(one[s], expected[s])
        np.testing.assert_array_equal(two[s], expected[s])
