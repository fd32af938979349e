"""Unit-norm decoder rows: a gradient transform and the projection after each step.

Removing the component of each row's gradient parallel to the row keeps the step in the
tangent space of the sphere (so Adam does not waste effort growing norms); projecting the
rows back to norm 1 after the update removes the remaining drift.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

KEY = "W_dec"


def remove_parallel_component(key: str = KEY) -> optax.GradientTransformation:
    """Subtract from each row of ``updates[key]`` its projection on the matching param row."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("remove_parallel_component needs params: call update(grads, state, params)")
        def tangent(path, g, w):  # only the leaf under ``key``; any mapping type (dict, nnx.State) is kept
            if getattr(path[0], "key", None) != key:
                return g
            coef = jnp.sum(g * w, axis=-1, keepdims=True) / jnp.sum(w * w, axis=-1, keepdims=True)
            return g - coef * w

        return jax.tree_util.tree_map_with_path(tangent, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)


def project_rows(params: dict[str, jax.Array], key: str = KEY, eps: float = 1e-12) -> dict[str, jax.Array]:
    """Params with the rows of ``params[key]`` rescaled to unit L2 norm."""
    w = params[key]
    return {**params, key: w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), eps)}
