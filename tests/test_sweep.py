"""Sweeps: members trained together on one data pass equal the same members trained alone."""
import dataclasses
import json

import numpy as np
import pytest

from sae_jax.config import ConfigError, HeldoutEvalConfig
from sae_jax.data.open import open_source
from sae_jax.export import load_sae
from sae_jax.sweep import _Group, member_configs, train_sweep
from sae_jax.trainer import train
from tests.helpers_train import tiny_config


def _members(root, steps=20):
    """Two stackable BatchTopK members (other seed and lr), a dense TopK and a ReLU member (in turn)."""
    # dense kernels: sae.impl=auto trains BatchTopK on the sparse kernels, which are stepped in turn
    base = dataclasses.replace(tiny_config(root, architecture="batchtopk", impl="dense"), steps=steps)
    return member_configs(base, [
        {"run_dir": str(root / "a")},
        {"run_dir": str(root / "b"), "seed": 1, "optim.lr": 1e-3},
        {"run_dir": str(root / "c"), "sae": {"architecture": "topk", "impl": "dense", "d_sae": 32}},
        {"run_dir": str(root / "d"), "sae.architecture": "relu", "sae.sparsity_coef": 0.05},
    ])


def _assert_exports_close(a, b, exact=False):
    sa, sb = load_sae(a), load_sae(b)
    assert sa.params.keys() == sb.params.keys()
    for name in sa.params:
        if exact:
            np.testing.assert_array_equal(sa.params[name], sb.params[name], err_msg=name)
        else:
            np.testing.assert_allclose(sa.params[name], sb.params[name], rtol=2e-4, atol=2e-5, err_msg=name)
    ca, cb = (json.loads((p / "cfg.json").read_text()) for p in (a, b))
    for c in (ca, cb):
        c["metadata"]["config"].pop("run_dir")
    assert ca == cb


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """Each member trained alone with `train` (the reference)."""
    root = tmp_path_factory.mktemp("solo")
    for cfg in _members(root):
        train(cfg)
    return root


def test_sweep_equals_separate_runs_and_stacks_alike_members(tmp_path, solo, monkeypatch):
    groups = []
    real_init = _Group.__init__

    def spy(self, members):
        real_init(self, members)
        groups.append([m.index for m in members])

    monkeypatch.setattr(_Group, "__init__", spy)
    results = train_sweep(_members(tmp_path))
    assert sorted(groups) == [[0, 1], [2], [3]]  # a, b stacked (vmap); c and d stepped in turn
    for r, name in zip(results, "abcd"):
        assert int(r.state.step) == 20 and r.export_dir == tmp_path / name / "export"
        # in-turn members run the trainer's own compiled step: bit for bit; stacked ones to float tolerance
        _assert_exports_close(solo / name / "export", r.export_dir, exact=name in "cd")
        lines = [json.loads(l) for l in open(tmp_path / name / "metrics.jsonl")]
        ref = [json.loads(l) for l in open(solo / name / "metrics.jsonl")]
        assert [l["step"] for l in lines] == [l["step"] for l in ref]
        np.testing.assert_allclose([l["loss"] for l in lines], [l["loss"] for l in ref], rtol=1e-4)
        got, ref = (json.loads((d / name / "config.json").read_text()) for d in (tmp_path, solo))
        assert got | {"run_dir": ""} == ref | {"run_dir": ""}


@pytest.mark.slow  # several compiles: 5-12 s
def test_stopped_sweep_resumes_to_the_same_exports(tmp_path, solo):
    train_sweep(_members(tmp_path, steps=13))  # a step limit between checkpoints, as a kill would leave it
    assert all((tmp_path / n / "export").exists() for n in "abcd")
    results = train_sweep(_members(tmp_path))
    for r, name in zip(results, "abcd"):
        assert int(r.state.step) == 20
        assert (tmp_path / name / "export-step13").is_dir()  # the shorter export set aside, as train does
        _assert_exports_close(solo / name / "export", r.export_dir, exact=name in "cd")
        steps = [json.loads(l)["step"] for l in open(tmp_path / name / "metrics.jsonl")]
        assert steps == sorted(set(steps)) and steps[-1] == 20


@pytest.mark.slow  # several compiles: 5-12 s
def test_finished_member_is_reused_not_retrained(tmp_path, solo):
    members = _members(tmp_path)[:3]
    train(members[2])  # member c finished alone before the sweep
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*") if p.is_file()}
    results = train_sweep(members)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "c").rglob("*") if p.is_file()}
    changed = [p.name for p in before if after.get(p) != before[p] and p.name != "config.json"]
    assert not changed, changed
    assert int(results[2].state.step) == 20 and results[2].export_dir == tmp_path / "c" / "export"
    _assert_exports_close(solo / "a" / "export", results[0].export_dir)


@pytest.mark.slow  # several compiles: 5-12 s
def test_in_memory_source_stacked_l1_coefficients_and_a_member_alone_later(tmp_path):
    """ReLU members differing in seed and L1 coefficient are stacked and equal their solo runs; a sweep
    member is an ordinary run dir: `train` on its config resumes it (here: to more steps)."""
    cfg = dataclasses.replace(tiny_config(tmp_path / "x", architecture="relu"),
                              eval=HeldoutEvalConfig(every=5, n_rows=512))
    source = open_source(cfg.data)
    a, b = member_configs(dataclasses.replace(cfg, steps=10),
                          [{"sae.sparsity_coef": 0.05}, {"seed": 2, "sae.sparsity_coef": 0.2}])
    train_sweep([a, b], source=source)
    assert json.loads((tmp_path / "x" / "0" / "export" / "cfg.json").read_text())["metadata"]["in_memory_source"]
    alone = train(dataclasses.replace(b, run_dir=str(tmp_path / "alone")), source=source)
    _assert_exports_close(alone.export_dir, tmp_path / "x" / "1" / "export")
    heldout = [[(l["step"], l["heldout/fvu"]) for l in map(json.loads, open(d / "metrics.jsonl")) if "heldout/fvu" in l]
               for d in (tmp_path / "alone", tmp_path / "x" / "1")]
    assert [s for s, _ in heldout[1]] == [5, 10]
    np.testing.assert_allclose([v for _, v in heldout[1]], [v for _, v in heldout[0]], rtol=1e-4)
    r = train(dataclasses.replace(b, steps=20), source=source)
    assert int(r.state.step) == 20


@pytest.mark.parametrize("field, override", [
    ("data.batch_size", {"data.batch_size": 128}),
    ("data.seed", {"data.seed": 3}),
    ("data.holdout_fraction", {"data.holdout_fraction": 0.2}),
    ("steps", {"steps": 30}),
])
def test_members_that_do_not_share_the_data_stream_are_refused(tmp_path, field, override):
    base = tiny_config(tmp_path)
    with pytest.raises(ConfigError, match=f"{field} differs"):
        train_sweep(member_configs(base, [{}, override]))


def test_bad_sweep_files_are_refused(tmp_path):
    base = tiny_config(tmp_path)
    with pytest.raises(ConfigError, match="unknown config field 'sae.kk'"):
        member_configs(base, [{"sae.kk": 3}])
    with pytest.raises(ConfigError, match="share the run dir"):
        train_sweep(member_configs(base, [{"run_dir": str(tmp_path / "r")}, {"run_dir": str(tmp_path / "r")}]))
    with pytest.raises(ConfigError, match="list of members"):
        member_configs(base, {"sae.k": 3})


@pytest.mark.slow  # several compiles: 5-12 s
def test_cli_sweep(tmp_path):
    from sae_jax.cli import main

    members = tmp_path / "sweep.json"
    members.write_text(json.dumps([{"sae.k": 4}, {"sae.k": 8, "seed": 1}]))
    main(["sweep", "tiny", "--members", str(members), "--run-dir", str(tmp_path / "runs"), "--steps", "4",
          "--data.synthetic-n-rows", "4096", "--data.batch-size", "128", "--sae.d-sae", "32",
          "--log.no-progress", "--no-stack"])
    for i, k in ((0, 4), (1, 8)):
        cfg = json.loads((tmp_path / "runs" / str(i) / "config.json").read_text())
        assert cfg["sae"]["k"] == k and cfg["steps"] == 4
        assert (tmp_path / "runs" / str(i) / "export" / "cfg.json").exists()


@pytest.mark.slow  # several compiles: ~8 s
def test_sigterm_saves_every_member_and_rerun_equals_separate_runs(tmp_path, solo, monkeypatch):
    """The trainer's stop mechanism: SIGTERM mid-sweep saves every member at one step and exits 143;
    the same call again resumes them to the exports trained alone."""
    import os
    import signal

    from sae_jax.errors import Interrupted

    members = _members(tmp_path)[1:3]  # b (alone in its group now) and c
    real_step, calls = _Group.step, []

    def step(self, batch):
        calls.append(1)
        if len(calls) == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, batch)

    monkeypatch.setattr(_Group, "step", step)
    with pytest.raises(Interrupted, match="SIGTERM") as err:
        train_sweep(members)
    assert err.value.exit_code == 143
    saved = [sorted(int(p.name) for p in (tmp_path / n / "checkpoints").iterdir() if p.name.isdigit()) for n in "bc"]
    assert saved[0] == saved[1] and 10 > saved[0][-1] > 4  # one step for all, before the first checkpoint cadence
    assert not (tmp_path / "b" / "export").exists()
    monkeypatch.setattr(_Group, "step", real_step)
    for r, name in zip(train_sweep(members), "bc"):
        _assert_exports_close(solo / name / "export", r.export_dir, exact=True)
