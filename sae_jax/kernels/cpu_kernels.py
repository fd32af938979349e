"""Optional native XLA:CPU kernels (cpu_kernels.cc: top-k, the sparse backward, a one-pass Adam, the
sparse decode), built with the system C++ compiler on first use and cached; everything falls back to
the pure-JAX kernels when they cannot be built.

Set SAE_JAX_CPU_KERNELS=0 to disable it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

_SRC = Path(__file__).with_name("cpu_kernels.cc")
_TARGET = "sae_jax_topk_f32"
_BWD = "sae_jax_sparse_bwd_f32"
_ADAM = "sae_jax_adam_f32"
_DECODE = "sae_jax_decode_f32"
_state: dict[str, object] = {}
# -fno-math-errno: sqrt without errno, so the Adam loop vectorises (its inputs are never negative)
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-pthread")


def _cpu_signature() -> bytes:
    """The CPU's model and feature flags: the library is built with -march=native, so a cache
    shared between different machines must not hand one's build to the other."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor().encode()
    keep = [l for l in lines if l.startswith(("model name", "flags"))][:2]
    return "\n".join(keep).encode()


def _library_path() -> Path:
    key = hashlib.sha256(_SRC.read_bytes() + " ".join(_FLAGS).encode() + jax.__version__.encode()
                         + _cpu_signature()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sae_jax" / "kernels"
    return root / f"cpu_kernels-{key}.so"


def _build(lib: Path) -> None:
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [os.environ.get("CXX", "g++"), *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SRC), "-o", str(tmp)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    os.replace(tmp, lib)  # atomic: concurrent builders never load a half-written file


def available() -> bool:
    """True when the native kernel is built (or was just built) and registered with XLA."""
    if "ok" in _state:
        return bool(_state["ok"])
    ok = False
    if os.environ.get("SAE_JAX_CPU_KERNELS", "1") != "0":
        try:
            lib = _library_path()
            if not lib.exists():
                _build(lib)
            handle = ctypes.cdll.LoadLibrary(str(lib))
            jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handle.SaeJaxTopKF32), platform="cpu")
            jax.ffi.register_ffi_target(_BWD, jax.ffi.pycapsule(handle.SaeJaxSparseBwdF32), platform="cpu")
            jax.ffi.register_ffi_target(_ADAM, jax.ffi.pycapsule(handle.SaeJaxAdamF32), platform="cpu")
            jax.ffi.register_ffi_target(_DECODE, jax.ffi.pycapsule(handle.SaeJaxDecodeF32), platform="cpu")
            _state["handle"] = handle
            ok = True
        except (OSError, subprocess.CalledProcessError, AttributeError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            warnings.warn(f"sae_jax: native CPU top-k unavailable, using the pure-JAX kernel ({detail[-300:]})")
    _state["ok"] = ok
    return ok


def threads_for(mesh) -> int:
    """Threads per native call on ``mesh``: with several of its devices on this host (forced host
    devices), each device's share of the cores, so that their concurrent calls do not oversubscribe
    them; 0 (every hardware thread) with one. The kernels' results do not depend on it."""
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat) if mesh is not None else 1
    return 0 if local <= 1 else max(1, len(os.sched_getaffinity(0)) // local)


def topk_native(x: jax.Array, k: int, bias: jax.Array | None = None, *, sorted: bool = True, threads: int = 0
                ) -> tuple[jax.Array, jax.Array]:
    """Exact top-k of x + bias along the last axis (float32, NaN-free input) on XLA:CPU; with
    ``sorted=False`` the k are in no particular order (cheaper: a selection instead of a sort).
    ``threads``: see ``threads_for``."""
    n = x.shape[-1]
    # -0.0, not 0.0: x + (-0.0) == x bit for bit, while -0.0 + 0.0 would turn into +0.0
    bias = jnp.full((n,), -0.0, jnp.float32) if bias is None else bias.astype(jnp.float32)
    out = (jax.ShapeDtypeStruct((*x.shape[:-1], k), jnp.float32),
           jax.ShapeDtypeStruct((*x.shape[:-1], k), jnp.int32))
    return jax.ffi.ffi_call(_TARGET, out, vmap_method="broadcast_all")(x.astype(jnp.float32), bias,
                                                                      sorted=bool(sorted), threads=int(threads))


def sparse_bwd_native(g, g_vals, vals, idx, xc, W_dec, threads: int = 0):
    """(dW_enc [d, F], dW_dec [F, d], db_enc [F], gp [B, k]) of one TopK selection; see the .cc.
    An index of -1 (a selection owned by another dictionary shard) adds nothing and gets gp 0."""
    n, d = W_dec.shape
    b, k = idx.shape
    f32 = jnp.float32
    out = (jax.ShapeDtypeStruct((d, n), f32), jax.ShapeDtypeStruct((n, d), f32),
           jax.ShapeDtypeStruct((n,), f32), jax.ShapeDtypeStruct((b, k), f32))
    return jax.ffi.ffi_call(_BWD, out)(g.astype(f32), g_vals.astype(f32), vals.astype(f32),
                                       idx.astype(jnp.int32), xc.astype(f32), W_dec.astype(f32), threads=int(threads))


def adam_native(w, g, mu, nu, scalars, *, tangent: bool, renorm: bool, threads: int = 0):
    """(w', mu', nu', sum of g^2) of one Adam step of a [R, C] float32 parameter in one pass; see the .cc.
    ``scalars`` = [b1, 1 - b1, b2, 1 - b2, eps, bias correction 1, bias correction 2, -lr]. w, mu and
    nu alias the outputs (updated in place when the caller donates them)."""
    if not available():
        raise RuntimeError("adam_native needs the native CPU kernels (a C++ compiler; SAE_JAX_CPU_KERNELS != 0)")
    f32 = jnp.float32
    out = (jax.ShapeDtypeStruct(w.shape, f32),) * 3 + (jax.ShapeDtypeStruct((), f32),)
    return jax.ffi.ffi_call(_ADAM, out, input_output_aliases={0: 0, 2: 1, 3: 2})(
        w, g, mu, nu, scalars.astype(f32), tangent=bool(tangent), renorm=bool(renorm), threads=int(threads))


def decode_native(vals, idx, W_dec, base=0, threads: int = 0):
    """[B, d] = sum_j vals[:, j] * W_dec[idx[:, j] - base] over the entries with base <= idx < base + F
    (a dictionary shard's own selections; the rest, and zero values, are skipped); see the .cc."""
    b = idx.shape[0]
    out = jax.ShapeDtypeStruct((b, W_dec.shape[1]), jnp.float32)
    base = jnp.asarray(base, jnp.int32).reshape(1)
    return jax.ffi.ffi_call(_DECODE, out)(vals.astype(jnp.float32), idx.astype(jnp.int32), base,
                                          W_dec.astype(jnp.float32), threads=int(threads))
