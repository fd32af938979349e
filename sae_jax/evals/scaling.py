"""Power-law fits of a loss against scale (e.g. FVU against the number of latents F), with a CI for the exponent.

Two forms:

- ``y = a · F^(−α)``: ordinary least squares of log y on log F; the CI of α is the t interval of the
  slope (exact when the log-residuals are i.i.d. Gaussian; with a handful of sizes it is wide, as it should be);
- ``y = c + a · F^(−α)`` (an irreducible floor ``c``): nonlinear least squares (``scipy.optimize.curve_fit``,
  fitted in log y so small losses weigh as much as large ones) with a residual bootstrap for the CI of α.
"""
from __future__ import annotations

import numpy as np
from scipy import optimize, stats


def _check(sizes, values, min_points: int):
    F = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if F.ndim != 1 or F.shape != y.shape:
        raise ValueError(f"sizes and values must be 1-D of one length, got shapes {F.shape} and {y.shape}")
    if len(F) < min_points:
        raise ValueError(f"a power-law fit needs at least {min_points} points, got {len(F)}; add sizes")
    if not (np.isfinite(F).all() and np.isfinite(y).all()) or (F <= 0).any() or (y <= 0).any():
        raise ValueError("sizes and values must be finite and > 0 (a power law is fitted in log space)")
    if len(np.unique(F)) < 2:
        raise ValueError("sizes must take at least two distinct values")
    return F, y


def fit_power_law(sizes, values, confidence: float = 0.95) -> dict:
    """Fit ``values = a · sizes^(−alpha)`` by OLS in log-log space.

    Returns ``alpha``, ``a``, ``alpha_ci`` (t interval of the slope at ``confidence``; NaN with 2 points),
    ``alpha_se``, ``r2`` and ``n``.
    """
    F, y = _check(sizes, values, 2)
    r = stats.linregress(np.log(F), np.log(y))
    n = len(F)
    if n > 2:
        t = stats.t.ppf(0.5 + confidence / 2, n - 2)
        ci = (float(-r.slope - t * r.stderr), float(-r.slope + t * r.stderr))
        se = float(r.stderr)
    else:
        ci, se = (float("nan"), float("nan")), float("nan")
    return {"form": "a*F^-alpha", "alpha": float(-r.slope), "a": float(np.exp(r.intercept)), "alpha_ci": ci,
            "alpha_se": se, "r2": float(r.rvalue ** 2), "n": n, "confidence": confidence}


def _floor_model(logF, log_a, alpha, c):
    return np.log(c + np.exp(log_a - alpha * logF))


def fit_power_law_floor(sizes, values, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0) -> dict:
    """Fit ``values = c + a · sizes^(−alpha)`` (``c >= 0``) by least squares in log y; CI of alpha by a
    residual bootstrap (``n_boot`` refits on fitted + resampled log-residuals). Needs >= 4 points."""
    F, y = _check(sizes, values, 4)
    logF, logy = np.log(F), np.log(y)
    p0 = (float(np.log(y.max() * F.min() ** 0.25)), 0.25, float(y.min()) * 0.5)
    bounds = ([-np.inf, 0.0, 0.0], [np.inf, 5.0, float(y.min())])

    def fit(target, start):
        p, _ = optimize.curve_fit(_floor_model, logF, target, p0=start, bounds=bounds, maxfev=20000)
        return p

    p = fit(logy, p0)
    fitted = _floor_model(logF, *p)
    resid = logy - fitted
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        try:
            boot.append(fit(fitted + rng.choice(resid, len(resid), replace=True), p)[1])
        except (RuntimeError, ValueError):  # a resample curve_fit cannot fit: left out (counted below)
            continue
    lo, hi = np.quantile(boot, [0.5 - confidence / 2, 0.5 + confidence / 2]) if boot else (np.nan, np.nan)
    return {"form": "c+a*F^-alpha", "alpha": float(p[1]), "a": float(np.exp(p[0])), "floor": float(p[2]),
            "alpha_ci": (float(lo), float(hi)), "n_boot_ok": len(boot), "n": len(F), "confidence": confidence}


def power_law(sizes, fit: dict) -> np.ndarray:
    """Values of a fit from ``fit_power_law`` / ``fit_power_law_floor`` at ``sizes`` (for plotting)."""
    F = np.asarray(sizes, dtype=np.float64)
    return fit.get("floor", 0.0) + fit["a"] * F ** (-fit["alpha"])
