"""Feature browser: one static, self-contained HTML page about chosen latents.

For each latent: firing frequency, a histogram of its nonzero activations (inline SVG), its
top-activating contexts with each token shaded by the activation (the peak token outlined),
and the tokens whose logits its decoder direction raises / lowers most through the
unembedding (direct effect, W_U @ W_dec[latent]). No scripts, no external URLs.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np

from sae_jax.evals.core import SAELike
from sae_jax.export import decoder_directions
from sae_jax.evals.splice import real_tokens
from sae_jax.evals.labels import top_activating_rows


def pick_latents(frequency: np.ndarray, n: int) -> list[int]:
    """The ``n`` most frequently firing latents (alive ones only)."""
    order = np.argsort(-frequency, kind="stable")
    return [int(i) for i in order[:n] if frequency[i] > 0]


@dataclass
class LatentCard:
    latent: int
    n_tokens: int = 0
    values: list[float] = field(default_factory=list)  # nonzero activations seen
    top: list[tuple[float, int, int]] = field(default_factory=list)  # (value, sequence, position)
    logits_up: list[tuple[str, float]] = field(default_factory=list)
    logits_down: list[tuple[str, float]] = field(default_factory=list)

    @property
    def frequency(self) -> float:
        return len(self.values) / self.n_tokens if self.n_tokens else 0.0


@dataclass
class BrowserPage:
    cards: list[LatentCard]
    tokens: list[list[str]]  # per sequence, the decoded tokens (real positions only)
    html: str = ""


def collect(sae: SAELike, acts_per_batch, masks_per_batch, latents: list[int], top_n: int = 8) -> list[LatentCard]:
    """Top contexts and activation values of ``latents`` from [B, T, d] activation batches.

    Only positions where the mask is True count (real, non-special tokens). Sequences are
    numbered globally in batch order; a context is ``(value, sequence, position)``.
    """
    cards = [LatentCard(int(j)) for j in latents]
    cols = np.asarray(latents, dtype=np.int64)
    seq_base = 0
    for acts, mask in zip(acts_per_batch, masks_per_batch):
        B, T, d = acts.shape
        seq, pos = np.nonzero(mask)
        h = sae.encode(acts[seq, pos])[:, cols]  # [n_real, n_latents]
        for c, card in enumerate(cards):
            v = h[:, c]
            card.n_tokens += len(v)
            nz = np.nonzero(v)[0]
            card.values.extend(v[nz].tolist())
            cand = card.top + [(float(v[i]), seq_base + int(seq[i]), int(pos[i])) for i in nz]
            card.top = sorted(cand, key=lambda t: -t[0])[:top_n]
        seq_base += B
    return cards


def logit_effects(sae: SAELike, W_U: np.ndarray, tokenizer, card: LatentCard, n: int = 8) -> None:
    effect = W_U @ decoder_directions(sae)[card.latent]
    order = np.argsort(effect)
    card.logits_up = [(tokenizer.decode([int(i)]), float(effect[i])) for i in order[::-1][:n]]
    card.logits_down = [(tokenizer.decode([int(i)]), float(effect[i])) for i in order[:n]]


def _svg_histogram(values: list[float], width: int = 260, height: int = 70, bins: int = 24) -> str:
    if not values:
        return "<svg width='260' height='20'><text x='0' y='14' font-size='11'>never fired</text></svg>"
    counts, edges = np.histogram(values, bins=bins)
    top = counts.max()
    bw = width / bins
    bars = "".join(
        f"<rect x='{i * bw:.1f}' y='{height - 14 - (c / top) * (height - 18):.1f}' width='{bw - 1:.1f}' "
        f"height='{(c / top) * (height - 18):.1f}' fill='#3b82f6'/>"
        for i, c in enumerate(counts)
    )
    axis = (f"<text x='0' y='{height - 2}' font-size='10'>{edges[0]:.3g}</text>"
            f"<text x='{width}' y='{height - 2}' font-size='10' text-anchor='end'>{edges[-1]:.3g}</text>")
    return f"<svg width='{width}' height='{height}' role='img'>{bars}{axis}</svg>"


def _context_html(tokens: list[str], acts: np.ndarray, pos: int, vmax: float, before: int = 12, after: int = 4) -> str:
    lo, hi = max(0, pos - before), min(len(tokens), pos + after + 1)
    spans = []
    for t in range(lo, hi):
        a = float(acts[t]) if t < len(acts) else 0.0
        alpha = 0.0 if vmax <= 0 else min(max(a / vmax, 0.0), 1.0)
        style = f"background:rgba(249,115,22,{alpha:.2f})"
        if t == pos:
            style += ";outline:2px solid #c2410c"
        title = f"act {a:.3g}"
        spans.append(f"<span class='tok' style='{style}' title='{title}'>{html.escape(tokens[t]).replace(' ', '&nbsp;')}</span>")
    return "".join(spans)


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#1e293b}
.card{border:1px solid #cbd5e1;border-radius:6px;padding:.8em 1em;margin:1em 0}
.card h2{margin:.1em 0 .4em;font-size:1.2em}.ctx{font-family:ui-monospace,monospace;font-size:.9em;margin:.2em 0;white-space:nowrap;overflow:hidden}
.tok{padding:0 1px;border-radius:2px}.cols{display:flex;gap:2em;flex-wrap:wrap}table{border-collapse:collapse;font-size:.85em}
td{padding:0 .5em;font-family:ui-monospace,monospace}.up{color:#15803d}.down{color:#b91c1c}.meta{color:#64748b;font-size:.9em}"""


def render(cards: list[LatentCard], tokens: list[list[str]], latent_acts: dict[tuple[int, int], np.ndarray], title: str) -> str:
    """The page. ``latent_acts[(latent, sequence)]`` = that latent's activation along the sequence."""
    body = []
    for card in cards:
        vmax = card.top[0][0] if card.top else 0.0
        ctxs = "".join(
            f"<div class='ctx'><span class='meta'>{v:.3g}&nbsp;</span>"
            f"{_context_html(tokens[s], latent_acts[(card.latent, s)], p, vmax)}</div>"
            for v, s, p in card.top
        ) or "<p class='meta'>no activating tokens in these texts</p>"
        up = "".join(f"<tr><td class='up'>{html.escape(repr(t))}</td><td>{e:+.3f}</td></tr>" for t, e in card.logits_up)
        down = "".join(f"<tr><td class='down'>{html.escape(repr(t))}</td><td>{e:+.3f}</td></tr>" for t, e in card.logits_down)
        body.append(
            f"<div class='card' id='latent-{card.latent}'><h2>Latent {card.latent}</h2>"
            f"<p class='meta'>fires on {len(card.values):,} of {card.n_tokens:,} tokens "
            f"(frequency {card.frequency:.3g})</p>"
            f"<div class='cols'><div><b>activations</b><br>{_svg_histogram(card.values)}</div>"
            f"<div><b>logits raised</b><table>{up}</table></div><div><b>logits lowered</b><table>{down}</table></div></div>"
            f"<b>top contexts</b>{ctxs}</div>"
        )
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>")


def build_browser(model, tokenizer, sae: SAELike, batches: list[tuple[np.ndarray, np.ndarray]], layer: int, hook: str,
                  latents: list[int], top_n: int = 8, title: str = "Feature browser") -> BrowserPage:
    """Run the LM over ``batches``, collect the latents' top contexts and logit effects, render."""
    from sae_jax.lm import splice as lm_splice  # torch only when a model is run

    bad = [l for l in latents if not 0 <= l < sae.d_sae]
    if bad:
        raise ValueError(f"latent ids {bad} are outside [0, {sae.d_sae})")
    acts = list(lm_splice.hooked_activations(model, batches, layer, hook))
    masks = [real_tokens(ids, att, tokenizer.all_special_ids) for ids, att in batches]
    cards = collect(sae, acts, masks, latents, top_n)
    # per-token activations along each sequence that holds a top context, and its tokens
    tokens, latent_acts, seq = [], {}, 0
    cols = np.asarray(latents, dtype=np.int64)
    needed = {(c.latent, s) for c in cards for _, s, _ in c.top}
    for (ids, att), a, m in zip(batches, acts, masks):
        for b in range(ids.shape[0]):
            n = int(att[b].sum())
            tokens.append([tokenizer.decode([int(t)]) for t in ids[b, :n]])
            if any((l, seq) in needed for l in latents):
                h = np.where(m[b, :n, None], sae.encode(a[b, :n])[:, cols], 0.0)
                for c, l in enumerate(latents):
                    latent_acts[(l, seq)] = h[:, c]
            seq += 1
    W_U = lm_splice.unembedding(model)
    if W_U.shape[1] == sae.d_in:
        for card in cards:
            logit_effects(sae, W_U, tokenizer, card)
    page = BrowserPage(cards, tokens)
    page.html = render(cards, tokens, latent_acts, title)
    return page


def text_browser(sae: SAELike, source, rows: np.ndarray, texts, doc_ids: np.ndarray, latents: list[int],
                 top_n: int = 5, title: str = "Feature browser (texts)", max_chars: int = 400) -> tuple[dict[int, list[str]], str]:
    """For a store with one row per text (pooled): each latent's top ``top_n`` texts, strongest first,
    and a static HTML page. Returns ({latent: [texts]}, html)."""
    cols = np.asarray(latents, dtype=np.int64)
    top, vals = top_activating_rows(sae.encode, source.read, np.asarray(rows), top_n=top_n, latents=cols)
    fired = np.zeros(len(cols))
    for i in range(0, len(rows), 4096):
        fired += (sae.encode(source.read(np.asarray(rows)[i:i + 4096]))[:, cols] != 0).sum(0)
    out, parts = {}, [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
                      f"<h1>{html.escape(title)}</h1>"]
    for c, j in enumerate(latents):
        picked = [(float(v), texts[int(doc_ids[r])]) for r, v in zip(top[c], vals[c]) if r >= 0]
        out[int(j)] = [t for _, t in picked]
        status = "dead on these texts: not interpreted" if not picked else f"fires on {fired[c] / len(rows):.1%} of texts"
        parts.append(f"<section id='latent-{j}'><h2>latent {j}</h2><p>{status}</p><ol>")
        parts += [f"<li><b>{v:.3f}</b> {html.escape(t[:max_chars])}</li>" for v, t in picked]
        parts.append("</ol></section>")
    parts.append("</body></html>")
    return out, "\n".join(parts)
