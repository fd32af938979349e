"""The train state and its creation, already sharded over the mesh.

State shapes come from ``jax.eval_shape``, shardings from the one table in ``mesh.py``, and
``jax.jit(init, out_shardings=...)`` creates every array where it lives (no host copy of a
large dictionary, no resharding).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from sae_jax.mesh import state_shardings
from sae_jax.whitening import Whitening


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    """Scalar int32: optimizer steps taken."""
    params: dict[str, jax.Array]
    """Trainable SAE parameters (SAELens names)."""
    opt_state: Any
    """Optimizer state (Adam moments mirror params and are sharded like them)."""
    tokens_since_fired: jax.Array
    """[F] int32: tokens since each latent last fired (saturates, never overflows)."""
    arch_state: dict[str, jax.Array]
    """Non-trainable architecture state (e.g. the BatchTopK threshold)."""
    input_scale: jax.Array
    """Scalar: inputs are multiplied by this before the SAE (folded into exported weights)."""
    whitening: dict[str, jax.Array]
    """ZCA whitening applied to raw inputs before the scale ({} when off), as ``Whitening.to_arrays``
    (mean, matrix, inverse, eps), fitted once at the start so a resumed run uses the same transform."""


# Fields newer than some checkpoints: a run saved before they existed resumes with their empty value.
_ADDED_FIELDS = ("whitening",)


def restore_state(ckpt, step: int, abstract: TrainState) -> TrainState:
    """The TrainState saved at ``step`` (``ckpt``: a ``sae_jax.checkpoint.Checkpointer``); a checkpoint
    written before an added field existed restores when that field is empty in ``abstract``."""
    try:
        return ckpt.restore(step, abstract)
    except ValueError as err:
        absent = [name for name in _ADDED_FIELDS if not jax.tree.leaves(getattr(abstract, name))]
        if not absent:
            raise
        fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract) if f.name not in absent}
        try:
            restored = ckpt.restore(step, fields)
        except ValueError:
            raise err from None  # not the older layout either: the first mismatch is the one to report
        return abstract.replace(**restored)


def make_init_fn(arch, optimizer, d_in: int, d_sae: int) -> Callable:
    """``init(key, b_dec, input_scale, whitening=None) -> TrainState`` (whitening: ``Whitening.to_arrays()``)."""

    def init(key, b_dec, input_scale, whitening=None) -> TrainState:
        params = arch.init_params(key, d_in, d_sae, b_dec)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            tokens_since_fired=jnp.zeros((d_sae,), jnp.int32),
            arch_state=arch.init_state(d_sae, d_in=d_in),
            input_scale=jnp.asarray(input_scale, jnp.float32),
            whitening={k: jnp.asarray(v, jnp.float32) for k, v in (whitening or {}).items()},
        )

    return init


def abstract_state(arch, optimizer, d_in: int, d_sae: int, mesh: Mesh, whiten: bool = False):
    """(abstract TrainState with shardings attached, its shardings pytree)."""
    init = make_init_fn(arch, optimizer, d_in, d_sae)
    whitening = ({k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in Whitening.array_shapes(d_in).items()}
                 if whiten else None)
    shapes = jax.eval_shape(init, jax.random.key(0), jnp.zeros((d_in,), jnp.float32), 1.0, whitening)
    shardings = state_shardings(mesh, shapes)
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return abstract, shardings


def create_state(arch, optimizer, d_in: int, d_sae: int, mesh: Mesh, seed: int,
                 b_dec, input_scale: float, whitening: Whitening | None = None) -> TrainState:
    """A fresh TrainState, each array created directly with its sharding."""
    _, shardings = abstract_state(arch, optimizer, d_in, d_sae, mesh, whiten=whitening is not None)
    init = jax.jit(make_init_fn(arch, optimizer, d_in, d_sae), out_shardings=shardings)
    return init(jax.random.key(seed), jnp.asarray(b_dec, jnp.float32), jnp.float32(input_scale),
                None if whitening is None else whitening.to_arrays())
