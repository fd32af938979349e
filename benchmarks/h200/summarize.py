"""Markdown tables of the H200 runs in this folder (docs/performance.md quotes this output).

    python benchmarks/h200/summarize.py
"""
import json
from pathlib import Path

HERE = Path(__file__).parent
GIB = 2**30


def rows(name):
    return [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]


def method(r):
    return r["impl_used"] if r["impl_used"] == "dense" else f"sparse, top-k {r.get('topk_method', 'auto (lax)')}"


plans = {(p["n_latents"], p["config"]["batch"]): p["bytes_per_device"]["total"] for p in json.loads((HERE / "call2_plans.json").read_text())}
print("Step speed and memory vs F (d_in 576, k 32, float32 unless noted; sparse top-k: auto = chunked after this change):\n")
print("| run | F | batch | kernels | dtype | tokens/s | step ms | device peak GiB | compiled step GiB | planned GiB (CPU compile) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, label in (("call1_lax_topk.jsonl", "before (lax.top_k)"), ("call2_sizes.jsonl", "after"), ("call2_ab.jsonl", "A/B")):
    for r in rows(name):
        plan = plans.get((r["n_latents"], r["batch"])) if label == "after" else None
        # one process per configuration except the A/B grid, whose peak is the process's running maximum
        peak = "–" if label == "A/B" else f"{r['device_peak_bytes'] / GIB:.1f}"
        print(f"| {label} | 2^{r['n_latents'].bit_length() - 1} | {r['batch']} | {method(r)} | {r['dtype']} | {r['tokens_per_s']:,.0f} "
              f"| {r['step_ms']:.1f} | {peak} | {r['compiled_bytes_per_device']['total'] / GIB:.1f} "
              f"| {'' if plan is None else f'{plan / GIB:.1f}'} |")
print("\nPeak above the compiled step: XLA's GEMM autotuning at compile time (same step, two processes each):\n")
print("| F | batch | XLA_FLAGS | tokens/s | device peak GiB | compiled step GiB |")
print("|---|---|---|---|---|---|")
for r in rows("call3_autotune.jsonl"):
    print(f"| 2^{r['n_latents'].bit_length() - 1} | {r['batch']} | {r.get('xla_flags') or '(default)'} | {r['tokens_per_s']:,.0f} "
          f"| {r['device_peak_bytes'] / GIB:.2f} | {r['compiled_bytes_per_device']['total'] / GIB:.2f} |")
m = rows("call2_loop_metrics.jsonl")
a, b = m[-2], m[-1]
ta, tb = a["tokens"] / a["tokens_per_s"], b["tokens"] / b["tokens_per_s"]  # tokens_per_s is cumulative
print(f"\nWhole `sae-jax train` loop (F 2^20, batch 4096, {b['step']} steps on random rows from --data.npy): "
      f"{(b['tokens'] - a['tokens']) / (tb - ta):,.0f} tokens/s between steps {a['step']} and {b['step']} "
      f"({b['tokens_per_s']:,.0f} averaged from the start, compile included).")
