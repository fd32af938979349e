"""Multi-host training: two JAX processes (4 CPU devices each, jax.distributed on 127.0.0.1,
configured through JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) train the
same SAE as one process with 8 devices, on a (4 data x 2 dict) mesh, checkpoints and export included."""
import os
import socket
import subprocess
import sys

import numpy as np

from sae_jax.export import load_sae

ARGS = ["train", "tiny", "--steps", "20", "--checkpoint.every", "10", "--log.no-progress",
        "--mesh.data", "4", "--mesh.dict", "2", "--data.batch-size", "512", "--sae.impl", "dense",
        "--data.synthetic-n-rows", "16384"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    base = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cli = [sys.executable, "-m", "sae_jax.cli", *ARGS]
    single = {**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    subprocess.run(cli + ["--run-dir", str(tmp_path / "one")], env=single, check=True, timeout=300,
                   capture_output=True)
    port = _free_port()
    procs = []
    for i in range(2):
        env = {**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen(cli + ["--run-dir", str(tmp_path / "two")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
    one, two = load_sae(tmp_path / "one" / "export"), load_sae(tmp_path / "two" / "export")
    for name in one.params:
        np.testing.assert_allclose(two.params[name], one.params[name], rtol=1e-5, atol=1e-6, err_msg=name)
