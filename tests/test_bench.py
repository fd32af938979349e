"""`sae-jax bench` end to end on a tiny grid (numbers are not asserted, only their consistency)."""
import json

import jax
import numpy as np
import pytest

from sae_jax.bench import BenchConfig, PlanConfig, run_bench, run_plan
from sae_jax.bench.flops import executed_flops, model_flops
from sae_jax.bench.measure import matmul_peak
from sae_jax.bench.peaks import CHIPS, chip_for, datasheet_tflops
from sae_jax.bench.report import markdown_table
from sae_jax.bench.run import parse_mesh
from sae_jax.config import ConfigError


def test_smoke_grid_runs_and_records_are_consistent(tmp_path):
    out = tmp_path / "r.jsonl"
    recs = run_bench(BenchConfig(smoke=True, mesh=("1x1", "2x1"), out=str(out), plot=True))
    assert len(recs) == 4  # sparse/dense x two meshes
    assert all(r["timed_steps"] == 2 for r in recs)
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert sorted({l["impl_used"] for l in lines}) == ["dense", "sparse"]
    for r in recs:
        assert r["tokens_per_s_min"] <= r["tokens_per_s"] <= r["tokens_per_s_max"]
        assert r["tokens_per_s"] == pytest.approx(r["batch"] / (r["step_ms"] / 1e3))
        assert np.isfinite(r["loss_first"]) and np.isfinite(r["loss_last"])
        assert r["compiled_bytes_per_device"]["argument"] > 0
        assert r["process_cpu_ms_per_step"] > 0
    dense = [r for r in recs if r["impl_used"] == "dense" and r["mesh"] == "1x1"][0]
    sparse = [r for r in recs if r["impl_used"] == "sparse"][0]
    # XLA's own cost model counts at least the dense formula; it also counts the AuxK branch of
    # the lax.cond (3 more B x F x d matmuls, 1/4 of the formula) and elementwise work
    assert 1.0 <= dense["xla_flops_per_device"] / dense["model_flops"] < 2.0
    assert sparse["xla_flops_per_device"] < dense["xla_flops_per_device"]
    assert (tmp_path / "r.md").read_text().count("\n| topk") == 4
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_flop_formulas():
    # dense: 6 x params x tokens
    assert model_flops("topk", 10, 3, 7) == 6 * (2 * 3 * 7) * 10
    assert executed_flops("topk", "dense", 10, 3, 7, 2) == model_flops("topk", 10, 3, 7)
    assert executed_flops("topk", "sparse", 10, 3, 7, 2) == 2 * 10 * 3 * 7 + 8 * 10 * 2 * 3 + 2 * 3 * 7


def test_datasheet_lookup():
    assert chip_for("NVIDIA H100 80GB HBM3") is CHIPS["h100"]
    assert chip_for("NVIDIA H200") is CHIPS["h200"]
    assert chip_for("TPU v5 lite") is CHIPS["tpu_v5e"]
    assert chip_for("TPU v6 lite") is CHIPS["tpu_v6e"]
    assert chip_for("cpu") is None and datasheet_tflops("cpu", "float32") is None
    assert datasheet_tflops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0


def test_matmul_peak_is_a_rate():
    assert matmul_peak("float32", n=128, repeats=2) > 1e6


def test_bad_mesh_names_the_format():
    with pytest.raises(ConfigError, match="DATAxDICT"):
        parse_mesh("4by2")


def test_markdown_table_has_a_row_per_record():
    rec = {"architecture": "topk", "d_in": 4, "n_latents": 8, "k": 2, "batch": 16, "dtype": "float32",
           "impl_used": "sparse", "mesh": "1x1", "tokens_per_s": 10.0, "tokens_per_s_min": 9.0,
           "tokens_per_s_max": 11.0, "step_ms": 1.6, "model_flops": 1e9, "executed_flops": 5e8,
           "achieved_executed_tflops": 0.1, "util_vs_measured_peak": 0.5, "util_vs_datasheet": None,
           "compiled_bytes_per_device": {"total": 2**20}, "device_kind": "cpu", "backend": "cpu",
           "matmul_peak_tflops": 0.1, "machine_load_1min": 1.0}
    t = markdown_table([rec, rec])
    assert t.count("| topk | 4 | 8 |") == 2 and "50.0%" in t
    # the sharded step against the same step on one device, from the same run
    t = markdown_table([rec, rec | {"mesh": "1x2", "tokens_per_s": 8.0}, rec | {"mesh": "1x4", "impl_used": "dense"}])
    assert "| 1x1 | 10 (9–11) | 1.00x |" in t and "| 1x2 | 8 (9–11) | 0.80x |" in t
    assert "| 1x4 | 10 (9–11) | – |" in t
    t = markdown_table([rec | {"process_cpu_ms_per_step": 3.0}, rec | {"mesh": "1x2", "process_cpu_ms_per_step": 4.0}])
    assert "| 1x2 | 10 (9–11) | 1.00x (CPU 0.75x) |" in t


def test_planner_memory_matches_the_sharded_state(tmp_path):
    d, F, B = 64, 4096, 256
    res = run_plan(PlanConfig(d_in=d, n_latents=F, k=8, batch=B, mesh=("2x2", "1x4"), impl="dense",
                              out=str(tmp_path / "plan.json")))
    assert json.loads((tmp_path / "plan.json").read_text())[0]["mesh"] == "2x2"
    for r in res:
        data, dict_ = parse_mesh(r["mesh"])
        # state per device: params + Adam m, v (3 copies) sharded over dict, tokens_since_fired int32,
        # plus the batch shard; replicated b_dec / scalars are tiny
        state = 3 * 4 * (2 * d * F + F) / dict_ + 4 * F / dict_ + 3 * 4 * d
        want = state + 4 * B * d / data
        assert r["bytes_per_device"]["argument"] == pytest.approx(want, rel=0.05)
        assert r["bytes_per_latent_per_device"] > 0
        # the largest dictionary on a bigger chip is larger
        fits = r["largest_n_latents_fitting"]
        assert fits["h200"] > fits["h100"] > fits["tpu_v5e"] > F
        # GPUs keep one [B/data, F/dict] float32 buffer of headroom for XLA's GEMM autotuning
        gemm = 4 * B / data / dict_
        assert r["gpu_peak_bytes_per_device"] == pytest.approx(r["bytes_per_device"]["total"] + gemm * F)
        budget = 0.9 * 141 * 2**30
        slope = r["bytes_per_latent_per_device"]
        assert fits["h200"] == int((budget - r["fixed_bytes_per_device"]) / (slope + gemm))


def test_interleaved_rounds(tmp_path):
    recs = run_bench(BenchConfig(smoke=True, impl=("sparse",), rounds=3, out=str(tmp_path / "r.jsonl")))
    assert len(recs) == 1 and recs[0]["timed_steps"] == 3 * 2  # rounds x repeats
    assert recs[0]["loss_last"] < recs[0]["loss_first"]  # it trains: 1 warm-up + 6 Adam steps
