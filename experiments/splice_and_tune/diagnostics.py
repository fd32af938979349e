"""Numbers the README's discussion cites that run.py does not store: how c moved (quantiles, the
task/control correlation across latents) and the residual norms by layer (first token vs the rest).

    python experiments/splice_and_tune/diagnostics.py --out runs/sat     # writes diagnostics.json here
"""
import argparse
import json
import pathlib

import numpy as np


def cd_stats(tune_dir: pathlib.Path) -> dict:
    from safetensors.numpy import load_file

    task, ctrl = (load_file(str(tune_dir / m / "scale_shift.safetensors")) for m in ("cd", "cd_control"))
    q = lambda a: {f"q{int(100 * p)}": float(np.quantile(a, p)) for p in (0.5, 0.9, 0.99)} | {"max": float(a.max())}  # noqa: E731
    return {"abs_c_minus_1_task": q(np.abs(task["c"] - 1)), "abs_c_minus_1_control": q(np.abs(ctrl["c"] - 1)),
            "corr_c_task_control": float(np.corrcoef(task["c"] - 1, ctrl["c"] - 1)[0, 1]),
            "corr_d_task_control": float(np.corrcoef(task["d"], ctrl["d"])[0, 1])}


def norms(store: str, layers) -> dict:
    from sae_jax.data import store as st

    _, pos = st.read_positions(store)
    out = {}
    for layer in layers:
        x = st.open_store(f"{store}/layer{layer}_resid").read_range(0, len(pos))
        n = np.linalg.norm(x, axis=1)
        med = float(np.median(n))
        out[layer] = {"median_norm": med, "first_token_median_norm": float(np.median(n[pos == 0])),
                      "max_over_median": float(n.max() / med), "share_rows_over_10x_median": float(np.mean(n > 10 * med))}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/sat")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    here = pathlib.Path(__file__).parent
    layers = json.loads((here / "results.json").read_text())["params"]["layers"]
    res = {"tune": cd_stats(out / "tune")}
    for d in sorted(out.glob("tune_*")):
        res[d.name] = cd_stats(d)
    res["residual_norms"] = norms(str(out / "store"), layers)
    (here / "diagnostics.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
