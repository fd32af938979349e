"""Checkpoints and resume: an interrupted run ends with the same parameters as an uninterrupted one."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sae_jax.export import load_sae
from sae_jax.trainer import train
from tests.helpers_train import tiny_config


def assert_same_export(a: Path, b: Path):
    sa, sb = load_sae(a), load_sae(b)
    for name in sa.params:
        np.testing.assert_array_equal(sa.params[name], sb.params[name], err_msg=name)


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    full = tiny_config(tmp_path / "full", architecture="batchtopk")
    train(full)
    part = dataclasses.replace(full, run_dir=str(tmp_path / "part"), steps=13)  # stops between checkpoints
    train(part)
    resumed = train(dataclasses.replace(part, steps=full.steps))
    assert int(resumed.state.step) == full.steps
    assert_same_export(tmp_path / "full" / "export", tmp_path / "part" / "export")
    lines = [json.loads(l) for l in open(tmp_path / "part" / "metrics.jsonl")]
    assert lines[-1]["step"] == full.steps


def test_resume_refuses_a_changed_config(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    train(dataclasses.replace(cfg, steps=10))
    changed = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, k=5))
    with pytest.raises(ValueError, match="different config"):
        train(changed)


@pytest.mark.slow
def test_sigterm_then_rerun_equals_uninterrupted(tmp_path):
    """The real thing: SIGTERM a CLI run mid-way, rerun the same command, compare."""
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}

    def cmd(run_dir):
        return [sys.executable, "-m", "sae_jax.cli", "train", "tiny", "--run-dir", str(run_dir),
                "--steps", "400", "--checkpoint.every", "1000", "--log.every", "1", "--log.no-progress"]

    subprocess.run(cmd(tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "part"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "part" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 50):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert b"SIGTERM: saved step" in err, (out[-1000:], err[-2000:])  # one line on stderr, as the CLI documents
    assert not (tmp_path / "part" / "export").exists()  # it really stopped early
    subprocess.run(cmd(tmp_path / "part"), check=True, env=env, capture_output=True)
    assert_same_export(tmp_path / "full" / "export", tmp_path / "part" / "export")


def test_checkpoint_from_before_the_whitening_field_resumes(tmp_path):
    """A checkpoint written before TrainState had `whitening` (saved here in that layout: the
    other fields only) restores into today's state; a run that asks for whitening is refused."""
    import jax

    from sae_jax.assemble import assemble
    from sae_jax.checkpoint import Checkpointer
    from sae_jax.data.open import open_source
    from sae_jax.train_state import restore_state
    from tests.helpers_train import run_steps

    cfg = tiny_config(tmp_path / "run")
    source = open_source(cfg.data)
    state, _, _ = run_steps(cfg, source, 3, mesh_shape=(jax.device_count(), 1))
    old_layout = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "whitening"}
    ckpt = Checkpointer(str(tmp_path / "ckpt"), cfg.checkpoint)
    ckpt.save(3, old_layout)
    ckpt.wait()
    restored = restore_state(ckpt, 3, assemble(cfg, source.d_in).abstract)
    assert restored.whitening == {} and int(restored.step) == 3
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    whiten = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, whiten=True))
    with pytest.raises(ValueError):  # the checkpoint holds no whitening: not silently resumed without it
        restore_state(ckpt, 3, assemble(whiten, source.d_in).abstract)
    ckpt.close()
