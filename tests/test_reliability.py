"""Nothing lost, nothing silent: every fault and bad input of the reliability table, through the
real CLI in a subprocess. Each case checks the exit code, the one-line message (no traceback) and
what was preserved. With SAE_JAX_RELIABILITY_TABLE=FILE set, each case appends what the user
saw to FILE (JSON lines); scripts/reliability_table.py renders it as docs/reliability.md."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
ENV = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
                    "PYTHONPATH": str(REPO)}
SMALL = ["--log.no-progress", "--data.batch-size", "64", "--data.n-stat-rows", "256", "--sae.d-sae", "32",
         "--sae.k", "4", "--checkpoint.every", "10", "--optim.warmup-steps", "2", "--log.every", "1"]


def cli(*args, signal_when=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``sae-jax ARGS``; ``signal_when=(predicate, signum)`` sends signum once predicate() holds."""
    cmd = [sys.executable, "-m", "sae_jax.cli", *map(str, args)]
    if signal_when is None:
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    ready, signum = signal_when
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def record(case: str, finding: str, result, preserved: str) -> None:
    table = os.environ.get("SAE_JAX_RELIABILITY_TABLE")
    if table:
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        shown = next((l for l in lines if l.startswith(("sae-jax:", "warning:"))), lines[-1] if lines else "")
        with open(table, "a") as f:
            f.write(json.dumps({"case": case, "finding": finding, "rc": result.returncode,
                                "message": shown, "preserved": preserved}) + "\n")


def expect(result, rc: int, pattern: str) -> None:
    """Exit code ``rc``, and stderr says ``pattern`` on one 'sae-jax: error:' line, with no traceback."""
    assert result.returncode == rc, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    if rc in (1, 2):
        errors = [l for l in result.stderr.splitlines() if l.startswith("sae-jax: error:")]
        assert len(errors) == 1, result.stderr[-2000:]
        assert re.search(pattern, errors[0]), errors[0]
    else:
        assert re.search(pattern, result.stderr), result.stderr[-2000:]


def acts(path: Path, rows: int = 2048, d: int = 8, dtype=np.float32) -> Path:
    np.save(path, np.random.default_rng(0).standard_normal((rows, d)).astype(dtype))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 20-step run (checkpoints 10, 20; export) on a small .npy, trained through the CLI."""
    d = tmp_path_factory.mktemp("trained")
    npy = acts(d / "acts.npy")
    run = d / "run"
    result = cli("train", "tiny", "--data.npy", npy, "--run-dir", run, "--steps", 20, *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    return npy, run


def copy_run(trained, tmp_path) -> tuple[Path, Path]:
    npy, run = trained
    shutil.copytree(run, tmp_path / "run")
    return npy, tmp_path / "run"


# ---------------------------------------------------------------- 1. exports never delete what they did not write

def test_export_refuses_a_folder_that_is_not_an_export(trained, tmp_path):
    _, run = trained
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = cli("export", "--run-dir", run, "--out", out)
    expect(result, 1, r"not an earlier SAE export .*nothing was changed")
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    record("export --out <folder with other files>", "1", result, "the folder untouched")


def test_export_into_the_run_dir_is_refused(trained, tmp_path):
    _, run0 = trained
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    before = sorted(p.name for p in run.iterdir())
    result = cli("export", "--run-dir", run, "--out", run)
    expect(result, 1, r"not an earlier SAE export")
    assert sorted(p.name for p in run.iterdir()) == before and (run / "metrics.jsonl").stat().st_size > 0
    record("export --out <the run dir>", "1", result, "metrics.jsonl, checkpoints, config untouched")


def test_export_leaves_a_users_tmp_folder_and_replaces_its_own(trained, tmp_path):
    _, run = trained
    out = tmp_path / "exp"
    (tmp_path / "exp.tmp").mkdir()
    (tmp_path / "exp.tmp" / "keep.txt").write_text("x")
    assert cli("export", "--run-dir", run, "--out", out).returncode == 0
    result = cli("export", "--run-dir", run, "--out", out)  # over its own earlier export: allowed
    expect(result, 0, "")
    assert (tmp_path / "exp.tmp" / "keep.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "exp.tmp"]  # no temporary left
    record("export over its own earlier export, beside a user's <out>.tmp", "1", result,
           "<out>.tmp untouched; the earlier export replaced whole")


def test_full_disk_names_the_path_and_keeps_the_earlier_export(trained, tmp_path):
    _, run = trained
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        assert cli("export", "--run-dir", run, "--out", mnt / "export").returncode == 0
        before = (mnt / "export" / "sae_weights.safetensors").read_bytes()
        with open(mnt / "filler", "wb", buffering=0) as f:  # fill the disk
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        result = cli("export", "--run-dir", run, "--out", mnt / "export")
        expect(result, 1, r"(writing the export to .*/export failed|No space left on device: .*)")
        assert (mnt / "export" / "sae_weights.safetensors").read_bytes() == before
        record("export to a full disk", "—", result, "the earlier export there, intact")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---------------------------------------------------------------- 2. stores prove they are whole

@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    pytest.importorskip("torch")
    from sae_jax.lm.extract import ExtractConfig, run_extract
    from sae_jax.lm.models import tiny_random_model

    d = tmp_path_factory.mktemp("store")
    model, tok = tiny_random_model("llama", n_layers=1, d_model=16, seed=0)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    (d / "texts.txt").write_text("\n".join(f"text number {i} about cats and dogs {i * 3}" for i in range(60)))
    cfg = ExtractConfig(model=str(d / "model"), out=str(d / "store"), text=str(d / "texts.txt"), layers=(0,),
                        hooks=("resid",), context_length=16, batch_size=8, shard_rows=128, progress=False)
    run_extract(cfg)
    return cfg


def _store_copy(extracted, tmp_path):
    import dataclasses

    shutil.copytree(extracted.out, tmp_path / "store")
    return dataclasses.replace(extracted, out=str(tmp_path / "store")), tmp_path / "store" / "layer0_resid"


def _rows(path) -> np.ndarray:
    import tensorstore as ts

    from sae_jax.data import store as st

    return ts.open({"driver": "zarr3", "kvstore": st.kvstore_spec(str(path))}, open=True).result().read().result()


def test_deleted_shard_is_named_and_extract_restores_exactly_it(extracted, tmp_path):
    from sae_jax.lm.extract import run_extract

    cfg, array = _store_copy(extracted, tmp_path)
    original = _rows(array)
    (array / "c" / "1" / "0").unlink()
    result = cli("train", "topk", "--data.store", array, "--run-dir", tmp_path / "run", "--steps", 5, *SMALL)
    expect(result, 1, r"1 of \d+ shard files missing: c/1/0 \(rows 128-255\).*rerun the `sae-jax extract`")
    assert not (tmp_path / "run" / "checkpoints").exists()
    record("train on a store with a deleted shard file", "2", result, "nothing trained on zeros")
    summary = run_extract(cfg)
    assert summary["repaired"] == {"layer0_resid": [1]}
    np.testing.assert_array_equal(_rows(array), original)
    expect(cli("verify", array), 0, "")


def test_altered_shard_is_found_by_verify_and_repaired(extracted, tmp_path):
    from sae_jax.lm.extract import run_extract

    cfg, array = _store_copy(extracted, tmp_path)
    original = _rows(array)
    shard = array / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[64:64 + 16 * 4] = np.full(16, 0.5, np.float32).tobytes()  # finite garbage over one row
    shard.write_bytes(bytes(raw))
    result = cli("verify", tmp_path / "store")
    expect(result, 1, r"1 of \d+ shard files altered: c/0/0 \(rows 0-127\)")
    record("sae-jax verify on a store with altered bytes", "2", result, "store left as is, damage named")
    result = cli("train", "topk", "--data.store", array, "--data.verify", "--run-dir", tmp_path / "run",
                 "--steps", 5, *SMALL)
    expect(result, 1, r"altered: c/0/0")
    record("train --data.verify on the same store", "2", result, "nothing trained")
    assert run_extract(cfg)["repaired"] == {"layer0_resid": [0]}
    np.testing.assert_array_equal(_rows(array), original)


# ---------------------------------------------------------------- 3. exit codes and exports tell the truth

def interrupted_rerun(trained, tmp_path, signum) -> tuple[Path, subprocess.CompletedProcess]:
    """A longer rerun of the finished 20-step run, sent ``signum`` once it logged 15 more steps."""
    npy, run = copy_run(trained, tmp_path)
    metrics = run / "metrics.jsonl"
    ready = lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 35
    return run, cli("train", "tiny", "--data.npy", npy, "--run-dir", run, "--steps", 100000, *SMALL,
                    signal_when=(ready, signum))


def test_sigterm_exits_143_and_leaves_no_stale_export(trained, tmp_path):
    run, result = interrupted_rerun(trained, tmp_path, signal.SIGTERM)
    expect(result, 143, r"stopped by SIGTERM: saved step (\d+) .*rerun the same command to resume")
    assert "final batch" not in result.stdout
    assert not (run / "export").exists() and (run / "export-step20" / "cfg.json").exists()
    record("SIGTERM during `train` (a longer rerun of a finished run)", "3", result,
           "checkpoint of the step reached; the earlier export moved to export-step20/")
    step = int(re.search(r"saved step (\d+)", result.stderr).group(1))
    exported = cli("export", "--run-dir", run)  # an unfinished run's export says so, and eval warns
    expect(exported, 0, rf"exporting step {step} of a run whose target is 100000 steps")
    meta = json.loads((run / "export" / "cfg.json").read_text())["metadata"]
    assert (meta["steps"], meta["target_steps"]) == (step, 100000)
    evaluated = cli("eval", "--sae", run / "export", "--evals", "core")
    expect(evaluated, 0, rf"warning: .*export is step {step} of a run whose target is 100000 steps")
    record("eval of an export of an unfinished run", "3", evaluated, "evaluated, with the warning")


def test_ctrl_c_exits_130_with_one_line(trained, tmp_path):
    _, result = interrupted_rerun(trained, tmp_path, signal.SIGINT)
    expect(result, 130, r"interrupted \(Ctrl-C\): saved step \d+")
    record("Ctrl-C during `train`", "9", result, "checkpoint of the step reached")


# ---------------------------------------------------------------- 4, 7, 8: validation before work

BAD = [
    ("4", "--checkpoint.keep 0", ["--checkpoint.keep", "0"], 2, r"checkpoint.keep=0 is out of range"),
    ("7", "negative learning rate", ["--optim.lr", "-0.001"], 2, r"optim.lr=-0.001 is out of range: it must be > 0"),
    ("7", "negative warm-up", ["--optim.warmup-steps", "-5"], 2, r"optim.warmup_steps=-5 is out of range"),
    ("7", "--steps 0", ["--steps", "0"], 2, r"steps=0 is out of range: it must be >= 1"),
    ("7", "holdout fraction 1.5", ["--data.holdout-fraction", "1.5"], 2, r"holdout_fraction must be in \[0, 1\)"),
    ("7", "--data.n-stat-rows 0", ["--data.n-stat-rows", "0"], 2, r"data.n_stat_rows=0 is out of range"),
]


@pytest.mark.parametrize("finding,name,args,rc,pattern", BAD, ids=[b[1] for b in BAD])
def test_bad_config_is_refused_before_any_work(tmp_path, finding, name, args, rc, pattern):
    npy = acts(tmp_path / "acts.npy")
    result = cli("train", "tiny", "--data.npy", npy, "--run-dir", tmp_path / "run", "--steps", 5, *SMALL, *args)
    expect(result, rc, pattern)
    assert not (tmp_path / "run").exists()  # refused before the run dir was made
    record(f"train with {name}", finding, result, "nothing written")


def test_batch_larger_than_the_data_and_integer_input(tmp_path):
    npy = acts(tmp_path / "five.npy", rows=5)
    result = cli("train", "tiny", "--data.npy", npy, "--run-dir", tmp_path / "a", *SMALL, "--data.batch-size", 1024)
    expect(result, 2, r"data.batch_size=1024 is larger than the 5 training rows")
    record("5-row dataset, batch 1024", "7", result, "nothing written")
    ints = tmp_path / "ints.npy"
    np.save(ints, np.arange(2048 * 8, dtype=np.int32).reshape(2048, 8))
    result = cli("train", "tiny", "--data.npy", ints, "--run-dir", tmp_path / "b", *SMALL)
    expect(result, 1, r"ints.npy holds int32 values.*--data.cast")
    record("an int32 .npy", "7", result, "nothing written")


def _npy_cases(tmp_path):
    good = acts(tmp_path / "good.npy", rows=64)
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "garbage.npy").write_bytes(os.urandom(4096))
    (tmp_path / "truncated.npy").write_bytes(good.read_bytes()[:-100])
    return [("empty.npy", r"empty.npy is empty"), ("garbage.npy", r"garbage.npy is not a .npy file"),
            ("truncated.npy", r"truncated.npy is truncated: its header says shape \(64, 8\)")]


def test_unreadable_npy_files_are_named(tmp_path):
    for name, pattern in _npy_cases(tmp_path):
        result = cli("train", "tiny", "--data.npy", tmp_path / name, "--run-dir", tmp_path / "run", *SMALL)
        expect(result, 1, pattern)
        record(f"{name} ({name.split('.')[0]} .npy file)", "8", result, "nothing written")


# ---------------------------------------------------------------- 5, 9: checkpoints

def test_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(trained, tmp_path):
    npy, run = copy_run(trained, tmp_path)
    for f in (run / "checkpoints" / "20").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # the array data files
            f.write_bytes(os.urandom(f.stat().st_size))
    result = cli("train", "tiny", "--data.npy", npy, "--run-dir", run, "--steps", 30, *SMALL)
    expect(result, 0, r"warning: checkpoint step 20: cannot be read .*resuming from step 10")
    assert (run / "checkpoints.damaged" / "20").is_dir()
    record("a corrupt latest checkpoint", "5", result, "older checkpoint used; the damaged one kept in checkpoints.damaged/")
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # 11..20 logged once, though trained twice (finding 9)
    straight = cli("train", "tiny", "--data.npy", npy, "--run-dir", tmp_path / "straight", "--steps", 30, *SMALL)
    assert straight.returncode == 0
    a, b = load_file(str(run / "export" / "sae_weights.safetensors")), \
        load_file(str(tmp_path / "straight" / "export" / "sae_weights.safetensors"))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_finite_garbage_in_a_checkpoint_is_caught_by_its_fingerprint(trained, tmp_path):
    """A checkpoint that reads back fine but holds other numbers than were saved."""
    import jax
    import orbax.checkpoint as ocp

    from sae_jax.assemble import assemble
    from sae_jax.checkpoint import Checkpointer
    from sae_jax.config import TrainConfig
    from sae_jax.train_state import restore_state

    npy, run = copy_run(trained, tmp_path)
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    abstract = assemble(cfg, 8, devices=jax.devices()[:1]).abstract
    ckpt = Checkpointer(str(run / "checkpoints"), cfg.checkpoint)
    state = restore_state(ckpt, 20, abstract)
    ckpt.close()
    forged = state.replace(params={**state.params, "W_enc": state.params["W_enc"] + 1e-3})
    other = Checkpointer(str(tmp_path / "forge"), cfg.checkpoint)
    other.manager.save(20, args=ocp.args.StandardSave(forged), force=True)  # no fingerprint of its own
    other.wait()
    other.close()
    shutil.rmtree(run / "checkpoints" / "20")
    shutil.copytree(tmp_path / "forge" / "20", run / "checkpoints" / "20")
    result = cli("train", "tiny", "--data.npy", npy, "--run-dir", run, "--steps", 25, *SMALL)
    expect(result, 0, r"warning: checkpoint step 20: its contents differ from what was saved .*resuming from step 10")
    record("finite garbage in the latest checkpoint (reads fine)", "5", result,
           "caught by the fingerprint; resumed from step 10")


def test_half_deleted_checkpoint_folder_is_set_aside(trained, tmp_path):
    npy, run = copy_run(trained, tmp_path)
    shutil.rmtree(run / "checkpoints" / "10" / "default")  # killed while orbax deleted it
    result = cli("train", "tiny", "--data.npy", npy, "--run-dir", run, "--steps", 25, *SMALL)
    expect(result, 0, r"warning: checkpoint step 10 is incomplete .*moved it to")
    assert "Metadata file does not exist" not in result.stderr
    record("a checkpoint folder half-deleted by a kill", "9", result, "set aside in checkpoints.damaged/; resumed from 20")


# ---------------------------------------------------------------- 6. exports are checked on load

def test_export_cfg_is_checked_against_its_tensors(trained, tmp_path):
    _, run = trained
    cases = []
    for name, edit, pattern in [
        ("k = -3", lambda cfg, w: cfg.update(k=-3), r"integer 'k' in \[1, d_sae=32\], got -3"),
        ("k > d_sae", lambda cfg, w: cfg.update(k=99), r"integer 'k' in \[1, d_sae=32\], got 99"),
        ("W_dec of the wrong shape", lambda cfg, w: w.update(W_dec=np.ascontiguousarray(w["W_dec"].T)),
         r"W_dec has shape \(8, 32\) but cfg.json \(d_in=8, d_sae=32\) needs \(32, 8\)"),
        ("cfg.json not JSON", None, r"cfg.json is not valid JSON"),
    ]:
        out = tmp_path / name.replace(" ", "_").replace(">", "gt")
        shutil.copytree(run / "export", out)
        cfg, weights = json.loads((out / "cfg.json").read_text()), load_file(str(out / "sae_weights.safetensors"))
        if edit is None:
            (out / "cfg.json").write_text("{ not json")
        else:
            edit(cfg, weights)
            (out / "cfg.json").write_text(json.dumps(cfg))
            save_file(weights, str(out / "sae_weights.safetensors"))
        result = cli("eval", "--sae", out)
        expect(result, 1, pattern)
        record(f"eval of an export with {name}", "6", result, "nothing evaluated")
        cases.append(name)
    assert len(cases) == 4


# ---------------------------------------------------------------- 9. untrusted store metadata runs no code

def test_model_folder_with_custom_code_is_not_run(tmp_path):
    pytest.importorskip("transformers")
    from sae_jax.lm.models import load_model

    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(folder))
    assert not marker.exists()


def test_data_seed_orders_batches_but_keeps_the_synthetic_data():
    """Issue 12: --data.seed is the batch order; it changed the synthetic dataset too (cross-seed |cos| 0.23)."""
    from sae_jax.config import DataConfig
    from sae_jax.data.open import open_source

    rows = np.arange(0, 4096, 7)
    for synthetic in ("features", "shifts", "transcoder"):
        small = dict(synthetic=synthetic, synthetic_n_rows=4096, synthetic_d_in=16, synthetic_n_features=24)
        a = open_source(DataConfig(seed=0, **small)).read(rows)
        np.testing.assert_array_equal(a, open_source(DataConfig(seed=5, **small)).read(rows))
        assert not np.array_equal(a, open_source(DataConfig(seed=0, synthetic_seed=1, **small)).read(rows))
