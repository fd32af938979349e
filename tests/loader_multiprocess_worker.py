"""Worker for tests/test_loader_multiprocess.py: one JAX process assembling loader batches.

Usage: python loader_multiprocess_worker.py STORE OUT.npz N_PROCESSES PROCESS_ID PORT LOCAL_DEVICES
Writes, for each step, every addressable shard of the global batch with its row offset.
"""
import os
import sys

store_path, out_path, n_proc, proc_id, port, local_devices = sys.argv[1:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

if int(n_proc) > 1:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=int(n_proc), process_id=int(proc_id)
    )

from sae_jax.data.loader import BatchLoader  # noqa: E402
from sae_jax.data.store import open_store  # noqa: E402

BATCH, SEED, STEPS = 24, 7, 5
assert jax.device_count() == 8, jax.devices()
mesh = jax.make_mesh((8, 1), ("data", "dict"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
loader = BatchLoader(open_store(store_path), BATCH, SEED, NamedSharding(mesh, P("data", None)))
record = {"row_range": np.array(loader.row_range)}
it = loader.iter_from(0, prefetch=2)
for _ in range(STEPS):
    step, batch = next(it)
    assert batch.shape == (BATCH, loader.source.d_in)
    for k, shard in enumerate(batch.addressable_shards):
        start = shard.index[0].start or 0
        record[f"step{step}_shard{k}_start"] = np.array(start)
        record[f"step{step}_shard{k}_data"] = np.asarray(shard.data)
it.close()
np.savez(out_path, **record)
if int(n_proc) > 1:
    jax.distributed.shutdown()
