"""Where activations live inside a HuggingFace model, and how to read (or replace) them.

Hook points, per decoder/encoder block ``layer`` (0-based):

- ``"resid"``: the block's output, i.e. the residual stream after the block
  (``output_hidden_states[layer + 1]`` for every block but, in models that apply a final norm
  inside the base model's output, the last one).
- ``"attn_out"``: what the attention sub-layer adds to the residual stream.
- ``"mlp_out"``: what the MLP sub-layer adds to the residual stream.
- ``"mlp_hidden"``: the MLP's hidden layer after the activation (and gating), i.e. the input of
  its down projection (``down_proj`` / ``c_proj`` / ``dense_4h_to_h`` / ``fc2``), width
  ``intermediate_size``. TransformerLens calls this ``mlp.hook_post``; the issue's "MLP
  pre-activation" means the same point (pre-activation of the down projection). It is the
  down projection's *input*, so it is read and replaced with a forward pre-hook.
- ``"mlp_in"``: what the MLP sub-layer reads (the input of its MLP module, after the pre-MLP
  norm), width the hidden size: with ``mlp_out`` of the same pass, the [input | target] pairs a
  transcoder trains on. Also an input hook point (forward pre-hook on the MLP module).

For sandwich-norm models (Gemma 2/3) "added to the residual" means after the post-norms; for
post-LN encoders (BERT, MiniLM) it means the sub-layer's output projection, before the residual
add and LayerNorm. Works across Llama-style (Llama, SmolLM2, Qwen, Mistral, Gemma), GPT-2,
GPT-NeoX, OPT and BERT-style models; the block list is found by attribute path, else as the
``ModuleList`` whose length is ``config.num_hidden_layers``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

HOOKS = ("resid", "attn_out", "mlp_out", "mlp_hidden", "mlp_in")
# Hook points that are a module's first positional input rather than its output.
INPUT_HOOKS = ("mlp_hidden", "mlp_in")

# Attribute paths of the block list, tried in order.
_BLOCK_PATHS = (
    "model.layers",
    "model.model.layers",
    "model.language_model.layers",
    "model.language_model.model.layers",
    "language_model.model.layers",
    "layers",
    "transformer.h",
    "h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "decoder.layers",
    "encoder.layer",
    "bert.encoder.layer",
    "roberta.encoder.layer",
)

# Sub-modules inside one block, tried in order. BERT's "attention.output.dense" must come
# before GPT-NeoX's "attention" (BertAttention's output already contains residual + LayerNorm).
_SUBMODULE_PATHS = {
    "attn_out": ("self_attn", "attn", "attention.output.dense", "attention", "self_attention"),
    "mlp_out": ("mlp", "feed_forward", "output.dense", "ffn"),
}
# The MLP's down projection inside one block (mlp_hidden is its input). GPT-2's "mlp.c_proj"
# is spelled out so that "attn.c_proj" can never match; OPT keeps fc2 on the block itself.
_DOWN_PROJ_PATHS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.fc_out",
                    "feed_forward.down_proj", "feed_forward.w2", "fc2", "output.dense")
# Gemma 2/3: post-norms sit between the sub-layer and the residual add.
_SANDWICH_PATHS = {"attn_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"}


def _get_path(root: torch.nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _num_layers(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of transformer blocks, in execution order."""
    for path in _BLOCK_PATHS:
        blocks = _get_path(model, path)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0:
            return blocks
    n_layers = _num_layers(model)
    if n_layers is not None:
        for _, module in model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
                return module
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: none of the known "
        f"attribute paths {_BLOCK_PATHS} exists and no ModuleList has config.num_hidden_layers "
        "entries; add the model's block path to sae_jax.lm.hooks._BLOCK_PATHS"
    )


def num_blocks(model: torch.nn.Module) -> int:
    """How many transformer blocks the model runs."""
    return len(decoder_blocks(model))


def check_hook_name(hook: str) -> None:
    if hook not in HOOKS:
        hint = " (the MLP hidden layer, input of the down projection, is 'mlp_hidden')" if hook in (
            "mlp_pre", "mlp_post", "mlp_act") else ""
        raise ValueError(f"unknown hook point {hook!r}; choose one of {HOOKS}{hint}")


def hook_module(model: torch.nn.Module, layer: int, hook: str) -> torch.nn.Module:
    """The module whose forward output is activation ``hook`` of block ``layer``, or, for
    ``INPUT_HOOKS`` (mlp_hidden), whose first positional input is."""
    check_hook_name(hook)
    blocks = decoder_blocks(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(
            f"layer {layer} is out of range: {type(model).__name__} has {len(blocks)} blocks "
            f"(valid layers 0..{len(blocks) - 1})"
        )
    block = blocks[layer]
    if hook == "resid":
        return block
    if hook == "mlp_in":  # the whole MLP module (BERT's output.dense would read the hidden layer instead)
        for path in ("mlp", "feed_forward", "ffn"):
            module = _get_path(block, path)
            if isinstance(module, torch.nn.Module):
                return module
        raise ValueError(f"cannot find the MLP module of block {layer} ({type(block).__name__}) for 'mlp_in'; "
                         "tried mlp, feed_forward, ffn")
    if hook == "mlp_hidden":
        for path in _DOWN_PROJ_PATHS:
            module = _get_path(block, path)
            if isinstance(module, torch.nn.Module):
                return module
        children = [name for name, _ in block.named_modules()][:40]
        raise ValueError(
            f"cannot find the MLP down projection of block {layer} ({type(block).__name__}, modules "
            f"{children}); tried {_DOWN_PROJ_PATHS}: the model does not have an 'mlp_hidden' hook point "
            "that sae_jax knows")
    if all(hasattr(block, p) for p in ("pre_feedforward_layernorm", "post_feedforward_layernorm")):
        return getattr(block, _SANDWICH_PATHS[hook])
    for path in _SUBMODULE_PATHS[hook]:
        module = _get_path(block, path)
        if isinstance(module, torch.nn.Module):
            return module
    children = [name for name, _ in block.named_children()]
    raise ValueError(
        f"cannot find the {hook!r} sub-module of block {layer} ({type(block).__name__}, children "
        f"{children}); tried {_SUBMODULE_PATHS[hook]}"
    )


def hidden_size(model: torch.nn.Module) -> int:
    """The residual-stream width from the model's (text) config."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot read the hidden size of {type(model).__name__} from its config")


def hook_width(model: torch.nn.Module, layer: int, hook: str) -> int:
    """Width of the activation at ``(layer, hook)``: the hidden size, or for ``mlp_hidden`` the
    down projection's input width (read off its weight: nn.Linear is [out, in], GPT-2's Conv1D [in, out])."""
    if hook not in INPUT_HOOKS or hook == "mlp_in":
        check_hook_name(hook)
        return hidden_size(model)
    module = hook_module(model, layer, hook)
    if isinstance(module, torch.nn.Linear):
        return int(module.in_features)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.ndim == 2 and hasattr(module, "nf"):  # transformers' Conv1D
        return int(weight.shape[0])
    raise ValueError(f"cannot read the input width of {type(module).__name__} at block {layer} ({hook})")


def output_tensor(output: Any) -> torch.Tensor:
    """The activation tensor inside a module's forward output (tensor, tuple or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot find an activation tensor in a module output of type {type(output).__name__}")


def hook_tensor(hook: str, args: tuple, output: Any) -> torch.Tensor:
    """The activation of ``hook`` seen by a forward hook on ``hook_module(model, layer, hook)``."""
    return args[0] if hook in INPUT_HOOKS else output_tensor(output)


def replace_output_tensor(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its activation tensor replaced by ``new`` (for splicing hooks)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (new, *output[1:])
    if isinstance(output, list) and output and isinstance(output[0], torch.Tensor):
        return [new, *output[1:]]
    if hasattr(output, "last_hidden_state"):
        output.last_hidden_state = new
        return output
    raise TypeError(f"cannot replace the activation tensor in a module output of type {type(output).__name__}")


def activation_hook(model: torch.nn.Module, layer: int, hook: str,
                    fn: Callable[[torch.Tensor], torch.Tensor | None]) -> tuple:
    """A registration for ``registered_hooks`` that calls ``fn(activation [B, T, d])`` at
    ``(layer, hook)``; a tensor returned by ``fn`` replaces the activation downstream.

    Output hook points use a forward hook on the module's output; input hook points
    (``mlp_hidden``) a forward pre-hook on the down projection's first argument.
    """
    module = hook_module(model, layer, hook)
    if hook in INPUT_HOOKS:
        def pre(mod, args):
            if not args or not isinstance(args[0], torch.Tensor):
                raise TypeError(f"{type(mod).__name__} was called without a positional tensor input: "
                                f"cannot read the {hook!r} activation")
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        return module, pre, "pre"

    def post(mod, args, output):
        new = fn(output_tensor(output))
        return None if new is None else replace_output_tensor(output, new)

    return module, post


class _StopForward(Exception):
    """Raised from the last needed block's hook to skip the rest of the forward pass."""


@contextlib.contextmanager
def registered_hooks(hooks: Iterable[tuple]) -> Iterator[None]:
    """Register ``(module, forward_hook)`` pairs, or ``(module, forward_pre_hook, "pre")``
    triples (as ``activation_hook`` returns for input hook points); always removed on exit."""
    handles = []
    try:
        for module, fn, *kind in hooks:
            if kind and kind[0] == "pre":
                handles.append(module.register_forward_pre_hook(fn))
            else:
                handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


HookSpec = tuple[int, str]


def normalize_specs(model: torch.nn.Module, specs: Iterable[HookSpec]) -> list[HookSpec]:
    """Deduplicated ``(layer, hook)`` pairs with negative layers counted from the end."""
    n_blocks = num_blocks(model)
    out = []
    for layer, hook in specs:
        layer = int(layer)
        check_hook_name(hook)
        if not -n_blocks <= layer < n_blocks:
            raise ValueError(f"layer {layer} is out of range: the model has {n_blocks} blocks (0..{n_blocks - 1})")
        out.append((layer % n_blocks, str(hook)))
    out = list(dict.fromkeys(out))
    if not out:
        raise ValueError("no hook points requested; pass at least one (layer, hook) pair")
    return out


@contextlib.contextmanager
def capture_activations(
    model: torch.nn.Module, specs: Iterable[HookSpec], stop_early: bool = True
) -> Iterator[dict[HookSpec, torch.Tensor]]:
    """Record activations ``{(layer, hook): tensor}`` during forward passes inside the block.

    With ``stop_early`` the forward pass is cut after the last requested block: the model
    call inside the ``with`` raises a private exception which this context manager swallows,
    so code after the call inside the block does not run (the model's return value is lost).
    Use ``forward_activations`` unless you need the model's output too.
    """
    specs = normalize_specs(model, specs)
    store: dict[HookSpec, torch.Tensor] = {}

    def recorder(spec: HookSpec):
        def fn(act):
            store[spec] = act.detach()

        return fn

    hooks = [activation_hook(model, layer, hook, recorder((layer, hook))) for layer, hook in specs]
    if stop_early:
        last_block = decoder_blocks(model)[max(layer for layer, _ in specs)]

        def stop(module, args, output):
            raise _StopForward

        hooks.append((last_block, stop))  # registered last, so it fires after the recorders
    with registered_hooks(hooks):
        try:
            yield store
        except _StopForward:
            pass


@torch.no_grad()
def forward_activations(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], specs: Iterable[HookSpec]
) -> dict[HookSpec, torch.Tensor]:
    """Run the model on ``inputs`` up to the last requested block; ``{(layer, hook): [B, T, d]}``."""
    specs = normalize_specs(model, specs)
    extra = {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None) is not None else {}
    with capture_activations(model, specs, stop_early=True) as store:
        model(**inputs, **extra)
    missing = [spec for spec in specs if spec not in store]
    if missing:
        raise RuntimeError(f"hook points {missing} did not fire during the forward pass")
    return store
