"""The device mesh and the only table of PartitionSpecs.

Axes: 'data' (batch) and 'dict' (dictionary / latent axis). A laptop CPU runs a (1, 1)
mesh through the same jitted step as a TPU slice.
"""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sae_jax.config import MeshConfig

# Per-name specs of everything in the train state that is laid out along the dictionary.
PARAM_SPECS: dict[str, P] = {
    "W_enc": P(None, "dict"),
    "W_dec": P("dict", None),
    "b_enc": P("dict"),
    "b_dec": P(),
    "log_threshold": P("dict"),
    "threshold": P("dict"),
    "tokens_since_fired": P("dict"),
    # gated SAE: per-latent gate/magnitude parameters
    "b_gate": P("dict"),
    "b_mag": P("dict"),
    "r_mag": P("dict"),
    # skip-transcoder: [d_out, d_in] linear skip, small and replicated
    "W_skip": P(),
    # SSAE code normalisation (per latent)
    "code_gamma": P("dict"),
    "code_beta": P("dict"),
    "code_mean": P("dict"),
    "code_var": P("dict"),
}
BATCH_SPEC = P("data", None)
CODES_SPEC = P("data", "dict")


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """A ('data', 'dict') mesh over all (or the given) devices."""
    devices = devices if devices is not None else jax.devices()
    data, _ = cfg.shape(len(devices))
    # jax.make_mesh orders devices so each process's devices are adjacent (multi-host safe).
    # Auto axes: XLA propagates shardings from the in/out specs (no explicit-sharding types).
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, cfg.dict), ("data", "dict"), axis_types=auto, devices=devices)


def spec_for_path(path: tuple) -> P:
    """PartitionSpec of a state leaf, from the last dict key on its path (replicated otherwise)."""
    for entry in reversed(path):
        key = getattr(entry, "key", None)
        if isinstance(key, str) and key in PARAM_SPECS:
            return PARAM_SPECS[key]
        name = getattr(entry, "name", None)
        if isinstance(name, str) and name in PARAM_SPECS:
            return PARAM_SPECS[name]
    return P()


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
    """NamedShardings for a (possibly abstract) state pytree, leaf by leaf."""

    def one(path, leaf):
        spec = spec_for_path(path)
        if len(spec) > getattr(leaf, "ndim", 0):  # e.g. scalar leaves under a param name
            spec = P()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
