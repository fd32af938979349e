"""Splicing: replace one hooked activation of a PyTorch LM by a transform of it, and measure.

The transform is a NumPy function ``float32 [n, d] -> float32 [n, d]`` (SAE reconstruction,
zero / mean ablation, latent ablation, steering — built in ``sae_jax.evals.splice`` from the
SAE's own encode/decode), applied only at positions selected by a mask (real, non-special
tokens); every other position keeps its clean value. Losses are next-token cross-entropy
and KL(clean || variant) over the vocabulary, at targets that are real, non-special tokens.

With a ``source_hook`` the transform reads another activation of the same block and its
output replaces the hooked one: a transcoder splice reads ``mlp_in`` and replaces ``mlp_out``
(the MLP replaced by the transcoder).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from sae_jax.lm.hooks import activation_hook, registered_hooks

Transform = Callable[[np.ndarray], np.ndarray]


class _Splice:
    """Forward hook that rewrites the activation at ``mask`` positions with ``transform``."""

    def __init__(self):
        self.transform: Transform | None = None
        self.mask: torch.Tensor | None = None  # bool [B, T]
        self.source: torch.Tensor | None = None  # set by the source hook's recorder, if there is one

    def record_source(self, act: torch.Tensor) -> None:
        self.source = act.detach()

    def __call__(self, act: torch.Tensor) -> torch.Tensor | None:
        if self.transform is None:
            return None
        mask = self.mask if self.mask is not None else torch.ones(act.shape[:2], dtype=torch.bool, device=act.device)
        if mask.shape != act.shape[:2]:
            raise ValueError(f"splice mask shape {tuple(mask.shape)} does not match the activation {tuple(act.shape[:2])}")
        read = act if self.source is None else self.source
        picked = read[mask].detach().to(torch.float32).cpu().numpy()
        new_rows = np.asarray(self.transform(picked), dtype=np.float32)
        if new_rows.shape != (picked.shape[0], act.shape[-1]):
            raise ValueError(f"splice transform returned shape {new_rows.shape}, expected "
                             f"{(picked.shape[0], act.shape[-1])}")
        new = act.clone()
        new[mask] = torch.from_numpy(new_rows).to(device=act.device, dtype=act.dtype)
        return new


@contextlib.contextmanager
def spliced(model: torch.nn.Module, layer: int, hook: str, source_hook: str | None = None) -> Iterator[_Splice]:
    """Hook ``(layer, hook)``; set ``.transform`` (None = clean) and ``.mask`` before each forward.

    ``source_hook``: the transform reads this activation of the block (which must run first,
    e.g. ``mlp_in`` for ``mlp_out``) instead of the replaced one."""
    splice = _Splice()
    hooks = [activation_hook(model, layer, hook, splice)]
    if source_hook is not None:  # registered first: on a shared module it records before the splice
        hooks.insert(0, activation_hook(model, layer, source_hook, splice.record_source))
    with registered_hooks(hooks):
        yield splice


def splice_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """Positions that are real (attended) and not special tokens (BOS/EOS/PAD...)."""
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


@dataclass
class VariantLoss:
    """Summed next-token losses of one variant over the counted targets."""

    ce_sum: float = 0.0
    kl_sum: float = 0.0
    n_tokens: int = 0

    @property
    def ce(self) -> float:
        return self.ce_sum / self.n_tokens if self.n_tokens else float("nan")

    @property
    def kl(self) -> float:
        return self.kl_sum / self.n_tokens if self.n_tokens else float("nan")


def _logits(model, input_ids, attention_mask):
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return (out.logits if hasattr(out, "logits") else out[0]).float()


@torch.no_grad()
def splice_losses(
    model: torch.nn.Module,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    layer: int,
    hook: str,
    variants: Mapping[str, Transform | None],
    special_ids: Iterable[int],
    source_hook: str | None = None,
) -> dict[str, VariantLoss]:
    """CE and KL(clean || variant) for every variant over ``(input_ids, attention_mask)`` batches
    (``source_hook``: transforms read that activation, see ``spliced``).

    A variant of ``None`` is the clean model ("clean" is always computed, as KL's reference).
    Targets counted: token t+1 where both t and t+1 are attended and t+1 is not special.
    """
    special_ids = list(special_ids)
    device = next(model.parameters()).device
    results = {"clean": VariantLoss(), **{name: VariantLoss() for name in variants if name != "clean"}}
    with spliced(model, layer, hook, source_hook) as splice:
        for ids_np, att_np in batches:
            ids = torch.as_tensor(np.asarray(ids_np), dtype=torch.long, device=device)
            att = torch.as_tensor(np.asarray(att_np), dtype=torch.long, device=device)
            splice.mask = splice_mask(ids, att, special_ids)
            target_ok = splice_mask(ids, att, special_ids)[:, 1:] & att[:, :-1].bool()
            targets = ids[:, 1:][target_ok]
            if targets.numel() == 0:
                continue
            splice.transform = None
            clean_lp = torch.log_softmax(_logits(model, ids, att)[:, :-1][target_ok], dim=-1)
            for name, transform in [("clean", None), *[(n, t) for n, t in variants.items() if n != "clean"]]:
                if transform is None:
                    lp = clean_lp
                else:
                    splice.transform = transform
                    lp = torch.log_softmax(_logits(model, ids, att)[:, :-1][target_ok], dim=-1)
                    splice.transform = None
                ce = -lp.gather(1, targets[:, None]).squeeze(1)
                kl = (clean_lp.exp() * (clean_lp - lp)).sum(-1)
                r = results[name]
                r.ce_sum += float(ce.double().sum())
                r.kl_sum += float(kl.double().sum())
                r.n_tokens += int(targets.numel())
    return results


@torch.no_grad()
def target_logprobs(
    model: torch.nn.Module,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    positions: np.ndarray,
    target_ids: np.ndarray,
    layer: int,
    hook: str,
    transform: Transform | None,
    special_ids: Iterable[int],
) -> np.ndarray:
    """log p(target_ids[i] | sequence i up to positions[i]) under the spliced model, float64 [B]."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long, device=device)
    att = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long, device=device)
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.long, device=device)
    tgt = torch.as_tensor(np.asarray(target_ids), dtype=torch.long, device=device)
    with spliced(model, layer, hook) as splice:
        splice.mask = splice_mask(ids, att, special_ids)
        splice.transform = transform
        logits = _logits(model, ids, att)
    lp = torch.log_softmax(logits[torch.arange(len(ids), device=device), pos], dim=-1)
    return lp.gather(1, tgt[:, None]).squeeze(1).double().cpu().numpy()


@torch.no_grad()
def mean_activation(
    model: torch.nn.Module,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    layer: int,
    hook: str,
    special_ids: Iterable[int],
) -> np.ndarray:
    """Mean hooked activation over real, non-special positions (float64 [d]), for mean ablation."""
    special_ids = list(special_ids)
    device = next(model.parameters()).device
    total, count = None, 0
    captured: list[torch.Tensor] = []

    def record(act):
        captured.append(act.detach())

    with registered_hooks([activation_hook(model, layer, hook, record)]):
        for ids_np, att_np in batches:
            ids = torch.as_tensor(np.asarray(ids_np), dtype=torch.long, device=device)
            att = torch.as_tensor(np.asarray(att_np), dtype=torch.long, device=device)
            captured.clear()
            _logits(model, ids, att)
            rows = captured[0][splice_mask(ids, att, special_ids)].double()
            total = rows.sum(0) if total is None else total + rows.sum(0)
            count += rows.shape[0]
    if not count:
        raise ValueError("no real, non-special tokens in the batches: cannot compute a mean activation")
    return (total / count).cpu().numpy()


@torch.no_grad()
def hooked_activations(
    model: torch.nn.Module, batches: Iterable[tuple[np.ndarray, np.ndarray]], layer: int, hook: str
) -> Iterator[np.ndarray]:
    """The clean hooked activation of each ``(input_ids, attention_mask)`` batch, float32 [B, T, d]."""
    from sae_jax.lm.hooks import forward_activations

    device = next(model.parameters()).device
    for ids, att in batches:
        inputs = {"input_ids": torch.as_tensor(np.asarray(ids), dtype=torch.long, device=device),
                  "attention_mask": torch.as_tensor(np.asarray(att), dtype=torch.long, device=device)}
        acts = forward_activations(model, inputs, [(layer, hook)])
        yield next(iter(acts.values())).to(torch.float32).cpu().numpy()


def unembedding(model: torch.nn.Module) -> np.ndarray:
    """The output embedding W_U as float32 NumPy [vocab, d_model] (logits = h @ W_U.T)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding: logit effects need a causal LM")
    return head.weight.detach().to(torch.float32).cpu().numpy()


@torch.no_grad()
def token_set_logodds(
    model: torch.nn.Module,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    layer: int,
    hook: str,
    transform: Transform | None,
    special_ids: Iterable[int],
    token_sets: Mapping[str, tuple[Iterable[int], Iterable[int]]],
) -> dict[str, np.ndarray]:
    """Per text and per named ``(positive_ids, negative_ids)`` set, the mean over the text's real
    (non-special) positions of log Σ_{t∈positive} p(t) − log Σ_{t∈negative} p(t) for the next token,
    with ``transform`` spliced at every real position of ``(layer, hook)`` (None = clean); one
    forward pass for all sets. ``{name: float64 [B]}``.

    A steering score: e.g. positive = {" she", " her"}, negative = {" he", " his"} for gender."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long, device=device)
    att = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long, device=device)
    sets = {}
    for name, (positive, negative) in token_sets.items():
        pos = torch.as_tensor(sorted(set(int(i) for i in positive)), dtype=torch.long, device=device)
        neg = torch.as_tensor(sorted(set(int(i) for i in negative)), dtype=torch.long, device=device)
        if not len(pos) or not len(neg):
            raise ValueError(f"token set {name!r} needs at least one positive and one negative token id")
        sets[name] = (pos, neg)
    with spliced(model, layer, hook) as splice:
        mask = splice_mask(ids, att, special_ids)
        splice.mask = mask
        splice.transform = transform
        lp = torch.log_softmax(_logits(model, ids, att), dim=-1)
    m = mask.to(lp.dtype)
    out = {}
    for name, (pos, neg) in sets.items():
        score = torch.logsumexp(lp[..., pos], -1) - torch.logsumexp(lp[..., neg], -1)  # [B, T]
        out[name] = ((score * m).sum(1) / m.sum(1).clamp(min=1)).double().cpu().numpy()
    return out
