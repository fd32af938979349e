"""Markdown table and plots of bench records."""
from __future__ import annotations

from pathlib import Path


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


_SAME_STEP = ("architecture", "d_in", "n_latents", "k", "batch", "dtype", "impl_used", "topk_method")


def _vs_one_device(r: dict, records: list[dict]) -> str:
    """tokens/s (and tokens per process CPU-second, when recorded) relative to the same step
    on the 1x1 mesh in the same run ("–" if not run)."""
    ref = [o for o in records if o["mesh"] == "1x1" and all(o.get(key) == r.get(key) for key in _SAME_STEP)]
    if not ref:
        return "–"
    out = f"{r['tokens_per_s'] / ref[0]['tokens_per_s']:.2f}x"
    if r.get("process_cpu_ms_per_step") and ref[0].get("process_cpu_ms_per_step"):
        out += f" (CPU {ref[0]['process_cpu_ms_per_step'] / r['process_cpu_ms_per_step']:.2f}x)"
    return out


def _impl(r: dict) -> str:
    m = r.get("topk_method", "auto")
    return r["impl_used"] if m == "auto" or r["impl_used"] != "sparse" else f"{r['impl_used']} ({m})"


def markdown_table(records: list[dict]) -> str:
    head = ("| arch | d_in | F | k | batch | dtype | impl | mesh | tokens/s median (min–max) | vs 1x1 (per CPU-s) | step ms "
            "| model GFLOP | executed GFLOP | executed TFLOP/s | util vs matmul | util vs datasheet "
            "| compiled MiB/device |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        mem = r.get("compiled_bytes_per_device") or {}
        rows.append(
            f"| {r['architecture']} | {r['d_in']} | {r['n_latents']} | {r['k']} | {r['batch']} | {r['dtype']} "
            f"| {_impl(r)} | {r['mesh']} | {r['tokens_per_s']:,.0f} ({r['tokens_per_s_min']:,.0f}–"
            f"{r['tokens_per_s_max']:,.0f}) | {_vs_one_device(r, records)} | {r['step_ms']:.1f} | {r['model_flops'] / 1e9:.1f} "
            f"| {r['executed_flops'] / 1e9:.1f} | {r['achieved_executed_tflops']:.3f} "
            f"| {_pct(r['util_vs_measured_peak'])} | {_pct(r['util_vs_datasheet'])} "
            f"| {mem.get('total', 0) / 2**20:.0f} |")
    if records:
        r = records[0]
        rows.append("")
        rows.append(f"Device: {r['device_kind']} ({r['backend']}); measured matmul peak "
                    f"{r['matmul_peak_tflops'] * 1e3:.0f} GFLOP/s per device; 1-min load {r['machine_load_1min']:.1f}.")
    return "\n".join(rows)


def plot_results(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[tuple, list] = {}
    for r in records:
        series.setdefault((r["architecture"], r["impl_used"], r["d_in"], r["mesh"]), []).append(r)
    for (arch, impl, d, mesh), rs in series.items():
        rs = sorted(rs, key=lambda r: r["n_latents"])
        if len(rs) > 1:
            a1.plot([r["n_latents"] for r in rs], [r["tokens_per_s"] for r in rs], "o-",
                    label=f"{arch} {impl} d={d} {mesh}")
    a1.set(xscale="log", yscale="log", xlabel="n_latents", ylabel="tokens/s", title="tokens/s vs dictionary size")
    by_dev: dict[tuple, list] = {}
    for r in records:
        by_dev.setdefault((r["architecture"], r["impl_used"], r["d_in"], r["n_latents"]), []).append(r)
    for (arch, impl, d, n), rs in by_dev.items():
        rs = sorted(rs, key=lambda r: r["n_devices"])
        if len(rs) > 1:
            a2.plot([r["n_devices"] for r in rs], [r["tokens_per_s"] for r in rs], "o-",
                    label=f"{arch} {impl} d={d} F={n}")
    a2.set(xscale="log", xlabel="devices", ylabel="tokens/s", title="tokens/s vs device count")
    for a in (a1, a2):
        if a.lines:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
