"""Side-by-side throughput of sae_jax and its peers, each running its OWN training loop.

    python benchmarks/peers/run_peers.py                 # configs A and B, all peers
    python benchmarks/peers/run_peers.py --configs A --rounds 3 --peers sparsify,sae_jax
    python benchmarks/peers/run_peers.py --peers sparsify,sae_jax:loop,sae_jax   # whole loops vs sparsify's

Creates a virtualenv per peer (default ~/.cache/sae_jax/peer_venvs/<peer>) and installs the
pinned versions with pip, writes one synthetic activation file per config, then runs the
implementations in interleaved rounds (the order rotates every round), each in a fresh
process: `warmup` untimed steps, then `steps` timed steps. Reports the median over rounds of
each round's median step time as tokens/s, the spread of the round medians, peak RSS of
the worker process (data included, the same data for everyone), ratios to sae_jax, and a
Markdown table. Run it on an otherwise idle machine; the 1-minute load is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

CONFIGS = {"A": (512, 8192), "B": (768, 24576)}
# peer -> pip requirements (torch pinned to the build this comparison was made with)
PEERS = {
    "sparsify": ["torch==2.13.0", "eai-sparsify==1.3.3"],
    "saelens": ["torch==2.13.0", "sae-lens==6.54.12"],
}
# The figure users meet: sae_jax's whole public loop (sae_jax.train), when it was run.
REFERENCE = "sae_jax:loop"
WORKERS = {"sparsify": "worker_sparsify.py", "saelens": "worker_saelens.py", "sae_jax": "worker_sae_jax.py"}


def ensure_venv(peer: str, root: Path, override: str | None) -> Path:
    """Python of the peer's virtualenv, creating and installing it when missing."""
    if override:
        py = Path(override) / "bin" / "python"
        if not py.exists():
            raise SystemExit(f"--{peer}-venv {override}: no bin/python there")
        return py
    venv = root / peer
    py = venv / "bin" / "python"
    marker = venv / ".sae_jax_installed"
    if not marker.exists():
        print(f"[setup] creating {venv} with {' '.join(PEERS[peer])}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEERS[peer]], check=True)
        marker.write_text(" ".join(PEERS[peer]) + "\n")
    return py


def make_data(path: Path, rows: int, d_in: int, seed: int) -> None:
    if path.exists() and np.load(path, mmap_mode="r").shape == (rows, d_in):
        return
    sys.path.insert(0, str(REPO))
    from sae_jax.bench.step import synthetic_activations

    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, synthetic_activations(rows, d_in, seed))


def run_worker(python: Path, impl: str, variant: str, data: Path, n_latents: int, a) -> dict:
    cmd = [str(python), str(HERE / WORKERS[impl]), "--data", str(data), "--n-latents", str(n_latents),
           "--k", str(a.k), "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--variant", variant]
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{impl}/{variant} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    rec = json.loads(lines[-1][7:])
    rec["load_before"] = load
    return rec


def summarise(runs: list[dict], batch: int) -> dict:
    medians = [float(np.median(r["step_s"])) for r in runs]
    med = float(np.median(medians))
    return {"tokens_per_s": batch / med, "tokens_per_s_min": batch / max(medians),
            "tokens_per_s_max": batch / min(medians), "step_s_round_medians": medians,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "load_1min": [r["load_before"] for r in runs]}


def table(results: dict, order: list[str], a) -> str:
    cfgs = list(results)
    head = "| implementation | " + " | ".join(
        f"{c}: d {CONFIGS[c][0]}, F {CONFIGS[c][1]} tokens/s (min–max) | vs sae_jax | peak RSS MiB" for c in cfgs) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(cfgs))]
    for name in order:
        cells = []
        for c in cfgs:
            r = results[c].get(name)
            ours = results[c].get(REFERENCE if REFERENCE in results[c] else "sae_jax:default")
            if r is None:
                cells += ["–", "–", "–"]
                continue
            ratio = f"{ours['tokens_per_s'] / r['tokens_per_s']:.2f}x" if ours else "–"
            cells += [f"{r['tokens_per_s']:,.0f} ({r['tokens_per_s_min']:,.0f}–{r['tokens_per_s_max']:,.0f})",
                      ratio, f"{r['peak_rss_mib']:,.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    loads = [l for c in results.values() for r in c.values() for l in r["load_1min"]]
    lines.append("")
    lines.append(f"TopK k={a.k}, batch {a.batch} tokens, fp32, Adam; {a.rounds} interleaved rounds x "
                 f"{a.steps} timed steps after {a.warmup} warm-up steps; machine: {cpu_model()}, "
                 f"{os.cpu_count()} logical CPUs; 1-min load before each run: {min(loads):.1f}–{max(loads):.1f}.")
    ref = REFERENCE if any(REFERENCE in c for c in results.values()) else "sae_jax:default"
    lines.append(f"'vs sae_jax' = {ref} tokens/s / this row's tokens/s.")
    return "\n".join(lines)


def cpu_model() -> str:
    """The CPU's model name (the project's machines have changed between runs)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="A,B")
    p.add_argument("--peers", default="sparsify,saelens,sae_jax",
                   help="comma list of impl[:variant]: sparsify[:adam|signum], saelens[:default|sparse], "
                        "sae_jax[:default|sparse|dense|loop] (loop: the whole sae_jax.train loop; "
                        "the others time the bare train step)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--venv-root", default=str(Path.home() / ".cache" / "sae_jax" / "peer_venvs"))
    p.add_argument("--sparsify-venv", default=None, help="use this existing venv instead of creating one")
    p.add_argument("--saelens-venv", default=None, help="use this existing venv instead of creating one")
    p.add_argument("--data-dir", default=str(Path.home() / ".cache" / "sae_jax" / "peer_data"))
    p.add_argument("--out", default=str(HERE / "results" / "latest"))
    a = p.parse_args()

    impls = []
    for spec in a.peers.split(","):
        impl, _, variant = spec.strip().partition(":")
        if impl not in WORKERS:
            raise SystemExit(f"unknown peer {impl!r}; choose from {', '.join(WORKERS)}")
        impls.append((impl, variant or "default"))
    pythons = {"sae_jax": Path(sys.executable)}
    for impl, _ in impls:
        if impl in PEERS and impl not in pythons:
            pythons[impl] = ensure_venv(impl, Path(a.venv_root), getattr(a, f"{impl}_venv"))

    results: dict[str, dict] = {}
    raw = []
    for c in a.configs.split(","):
        d_in, n_latents = CONFIGS[c]
        data = Path(a.data_dir) / f"{c}_{d_in}_{(a.warmup + a.steps) * a.batch}.npy"
        make_data(data, (a.warmup + a.steps) * a.batch, d_in, seed=0)
        runs: dict[str, list] = {f"{i}:{v}": [] for i, v in impls}
        for rnd in range(a.rounds):
            order = impls[rnd % len(impls):] + impls[:rnd % len(impls)]
            for impl, variant in order:
                rec = run_worker(pythons[impl], impl, variant, data, n_latents, a)
                rec["config"], rec["round"] = c, rnd
                raw.append(rec)
                runs[f"{impl}:{variant}"].append(rec)
                print(f"[{c} round {rnd}] {impl}:{variant}: {a.batch / np.median(rec['step_s']):,.0f} tokens/s, "
                      f"peak RSS {rec['peak_rss_mib']:,.0f} MiB, load {rec['load_before']:.1f}", flush=True)
        results[c] = {name: summarise(rs, a.batch) for name, rs in runs.items()}

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = table(results, [f"{i}:{v}" for i, v in impls], a)
    out.with_suffix(".json").write_text(json.dumps({"summary": results, "runs": raw, "args": vars(a),
                                                    "time": time.time(), "cpu": cpu_model()}, indent=1))
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
