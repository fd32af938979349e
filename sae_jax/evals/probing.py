"""Linear probes (scikit-learn logistic regression) on raw activations and on SAE codes.

- accuracy of a probe on a held-out split;
- selectivity (Hewitt & Liang): accuracy minus the accuracy on control tasks whose labels
  are shuffled at the same class frequencies, averaged over several controls (row-level shuffles, or
  type-level random label maps shared by train and test rows: ``control_task_selectivity``);
- k-sparse probing: the k units with the largest standardised class difference (Cohen's d) on the
  training split, a probe on those k only, swept over k.

Features may be dense NumPy or ``scipy.sparse`` (SAE codes are mostly zeros).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SPARSE_KS = (1, 2, 5, 10, 20, 50)


def _check(X, y, name):
    y = np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: {X.shape[0]} rows of features but {y.shape[0]} labels")
    if np.unique(y).size < 2:
        raise ValueError(f"{name}: labels have a single class; a probe needs at least two")
    return y


def fit_probe(X, y, C: float = 1.0, max_iter: int = 2000):
    """A standardised L2 logistic-regression probe fitted on ``(X, y)`` (a scikit-learn pipeline)."""
    y = _check(X, y, "train")
    scaler = StandardScaler(with_mean=not sp.issparse(X))
    return make_pipeline(scaler, LogisticRegression(C=C, max_iter=max_iter)).fit(X, y)


def probe_accuracy(X_train, y_train, X_test, y_test, C: float = 1.0, max_iter: int = 2000) -> float:
    """Held-out accuracy of a standardised L2 logistic-regression probe."""
    return float(fit_probe(X_train, y_train, C, max_iter).score(X_test, np.asarray(y_test)))


def control_labels(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels shuffled: the same class frequencies, no relation to the inputs."""
    return rng.permutation(np.asarray(y))


def selectivity(X_train, y_train, X_test, y_test, n_controls: int = 5, seed: int = 0, C: float = 1.0) -> dict[str, float]:
    """Probe accuracy, mean control-task accuracy, and their difference."""
    acc = probe_accuracy(X_train, y_train, X_test, y_test, C=C)
    rng = np.random.default_rng(seed)
    controls = [
        probe_accuracy(X_train, control_labels(y_train, rng), X_test, control_labels(y_test, rng), C=C)
        for _ in range(n_controls)
    ]
    return {"accuracy": acc, "control_accuracy": float(np.mean(controls)), "selectivity": acc - float(np.mean(controls))}


def type_control_labels(types, y, rng: np.random.Generator) -> np.ndarray:
    """A Hewitt & Liang control task: each word type gets one random label, drawn by permuting the types'
    own labels (the same class frequencies over types), and every row of that type carries it.

    ``y`` must be constant within a type (the real task is a property of the word)."""
    types, y = np.asarray(types), np.asarray(y)
    if types.shape != y.shape:
        raise ValueError(f"types {types.shape} and labels {y.shape} must have one entry per row")
    uniq, inv = np.unique(types, return_inverse=True)
    first = np.zeros(uniq.size, dtype=np.int64)
    first[inv[::-1]] = np.arange(len(inv))[::-1]  # first row of each type
    type_y = y[first]
    if (type_y[inv] != y).any():
        raise ValueError("labels differ between rows of the same type; a type-level control task needs "
                         "one label per type")
    return rng.permutation(type_y)[inv]


def control_task_selectivity(X_train, y_train, types_train, X_test, y_test, types_test, n_controls: int = 5,
                             seed: int = 0, C: float = 1.0) -> dict[str, Any]:
    """Selectivity against type-level control tasks (Hewitt & Liang 2019): accuracy on the real task minus
    the mean accuracy on ``n_controls`` random type→label maps, each map shared by train and test rows.

    A probe that memorises word identity scores well on a control task too; a selective one does not."""
    acc = probe_accuracy(X_train, y_train, X_test, y_test, C=C)
    types = np.concatenate([np.asarray(types_train), np.asarray(types_test)])
    y = np.concatenate([np.asarray(y_train), np.asarray(y_test)])
    rng = np.random.default_rng(seed)
    n_tr = len(y_train)
    controls = []
    for _ in range(n_controls):
        z = type_control_labels(types, y, rng)
        controls.append(probe_accuracy(X_train, z[:n_tr], X_test, z[n_tr:], C=C))
    return {"accuracy": acc, "control_accuracies": [float(c) for c in controls],
            "control_accuracy": float(np.mean(controls)), "selectivity": acc - float(np.mean(controls))}


def _column_means(X, mask) -> np.ndarray:
    sub = X[mask]
    return np.asarray(sub.mean(axis=0)).ravel()


def mean_difference(X, y) -> np.ndarray:
    """Per unit, the largest |mean(class c) - mean(rest)| over classes (|mean1 - mean0| if binary)."""
    y = np.asarray(y)
    classes = np.unique(y)
    diffs = [np.abs(_column_means(X, y == c) - _column_means(X, y != c)) for c in classes[: 1 if classes.size == 2 else None]]
    return np.max(diffs, axis=0)


def _column_sq_means(X, mask) -> np.ndarray:
    sub = X[mask]
    return np.asarray(sub.multiply(sub).mean(axis=0) if sp.issparse(sub) else (sub * sub).mean(axis=0)).ravel()


def standardised_difference(X, y) -> np.ndarray:
    """Per unit, the largest |Cohen's d| (pooled SD) of one class against the rest (inf for a unit that
    separates the classes with no spread, 0 for a constant one).

    Scale-free: a unit's rank does not depend on its magnitude (raw mean differences favour the
    few large-magnitude SAE latents, whatever they encode)."""
    y = np.asarray(y)
    classes = np.unique(y)
    X = X.astype(np.float64) if not sp.issparse(X) else X.astype(np.float64).tocsr()
    out = np.zeros(X.shape[1])
    for c in classes[: 1 if classes.size == 2 else None]:
        stats_ = []
        for mask in (y == c, y != c):
            n = int(mask.sum())
            m = _column_means(X, mask)
            ss = np.maximum(_column_sq_means(X, mask) - m * m, 0) * n  # sum of squared deviations
            stats_.append((n, m, ss))
        (n1, m1, s1), (n0, m0, s0) = stats_
        pooled = np.sqrt((s1 + s0) / max(n1 + n0 - 2, 1))
        diff = np.abs(m1 - m0)
        d = np.divide(diff, pooled, out=np.where(diff > 0, np.inf, 0.0), where=pooled > 0)  # no spread: a perfect split
        out = np.maximum(out, d)
    return out


def top_k_units(X_train, y_train, k: int) -> np.ndarray:
    """Indices of the k units with the largest standardised class difference (ties: lower index first)."""
    diff = standardised_difference(X_train, y_train)
    return np.argsort(-diff, kind="stable")[:k]


def sparse_probing(X_train, y_train, X_test, y_test, ks: Sequence[int] = SPARSE_KS, C: float = 1.0) -> dict[int, float]:
    """Held-out accuracy of a probe on the top-k units for each k (k capped at the unit count)."""
    n_units = X_train.shape[1]
    order = top_k_units(X_train, y_train, n_units)
    out = {}
    for k in ks:
        cols = order[: min(k, n_units)]
        out[int(k)] = probe_accuracy(X_train[:, cols], y_train, X_test[:, cols], y_test, C=C)
    return out


@dataclass
class ProbingResult:
    activations: dict[str, float]
    codes: dict[str, float]
    sparse_ks: list[int]
    sparse_codes: list[float]
    sparse_activations: list[float]
    n_train: int
    n_test: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_probing(acts: np.ndarray, codes, labels: np.ndarray, test_size: float = 0.25, seed: int = 0,
                     n_controls: int = 5, ks: Sequence[int] = SPARSE_KS) -> ProbingResult:
    """Probes on raw activations vs SAE codes (same rows, same stratified split)."""
    labels = _check(acts, labels, "probing")
    if codes.shape[0] != acts.shape[0]:
        raise ValueError(f"codes have {codes.shape[0]} rows, activations {acts.shape[0]}: they must be the same tokens")
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    codes = sp.csr_matrix(codes) if not sp.issparse(codes) else codes.tocsr()
    a = selectivity(acts[tr], labels[tr], acts[te], labels[te], n_controls, seed)
    c = selectivity(codes[tr], labels[tr], codes[te], labels[te], n_controls, seed)
    sc = sparse_probing(codes[tr], labels[tr], codes[te], labels[te], ks)
    sa = sparse_probing(acts[tr], labels[tr], acts[te], labels[te], ks)
    return ProbingResult(a, c, list(sc), list(sc.values()), list(sa.values()), len(tr), len(te))
