"""The training loop: data, state, checkpoints, logging and export around the pure step.

Metrics are fetched one step late so the host never makes the device wait. A checkpoint is
written only for a state whose step metrics were checked finite, so a diverged run stops
with a message and leaves the last good checkpoint intact. SIGTERM and Ctrl-C trigger a
best-effort final save; the same command then resumes with the same data order.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sae_jax import distributed
from sae_jax.assemble import assemble
from sae_jax.checkpoint import Checkpointer, all_finite
from sae_jax.config import ConfigError, TrainConfig, validate
from sae_jax.errors import Interrupted, SaeJaxError
from sae_jax.data.loader import BatchLoader, global_batch_rows
from sae_jax.data.open import open_source, training_rows
from sae_jax.data.paired import SPLIT_KEY
from sae_jax.sae.crosscoder import CrosscoderSAE
from sae_jax.sae.transcoder import TranscoderSAE
from sae_jax.data.source import ActivationSource
from sae_jax.export import export_state, state_sae
from sae_jax.heldout import HeldoutEval
from sae_jax.geometric_median import geometric_median
from sae_jax.normalization import layer_norm_in
from sae_jax.resample import ResampleConfig, resample_train_state
from sae_jax.mesh import batch_sharding
from sae_jax.train_state import TrainState, create_state, restore_state
from sae_jax.train_step import make_train_step, model_input
from sae_jax.whitening import Whitening, fit_zca

# Fields that must match to resume a run (steps, logging and checkpoint cadence may change).
_RESUME_KEYS = ("seed", "data", "sae", "optim", "dual")


# Export metadata of a run trained on rows passed to train(): its config's data section is not theirs.
IN_MEMORY = {"in_memory_source": True}


class TrainingError(SaeJaxError, RuntimeError):
    """Training stopped because a batch or the loss went bad."""


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    arch: Any
    metrics: dict[str, float]
    run_dir: Path
    export_dir: Path | None


def stat_rows(seed: int, n_stat_rows: int, n_rows: int) -> np.ndarray:
    """The fixed, sorted sample of source rows used for input statistics."""
    n = min(n_stat_rows, n_rows)
    return np.sort(np.random.default_rng([seed, 7]).choice(n_rows, n, replace=False))


def input_statistics(source, cfg: TrainConfig, arch) -> tuple[np.ndarray, float, Whitening | None]:
    """From a fixed sample: (b_dec init = geometric median of the sample as the SAE sees it,
    input scale, ZCA whitening or None)."""
    rows = stat_rows(cfg.data.seed, cfg.data.n_stat_rows, source.n_rows)
    n = len(rows)
    sample = source.read(rows).astype(np.float64)
    bad = ~np.isfinite(sample).all(axis=1)
    if bad.any():
        raise TrainingError(f"{bad.sum()} of {n} sampled activation rows contain NaN/Inf "
                            f"(first at source row {rows[np.argmax(bad)]}); clean or re-extract the data")
    if cfg.data.whiten and n < 2 * source.d_in:
        raise TrainingError(f"{n} sample rows cannot fit a {source.d_in}x{source.d_in} whitening (rank-deficient "
                            f"covariance): the source has too few rows for --data.whiten")
    whitening = fit_zca(sample, eps=cfg.data.whiten_eps) if cfg.data.whiten else None
    if whitening is not None:
        sample = whitening.apply(sample).astype(np.float64)
    scale = 1.0
    if cfg.data.normalize == "layernorm":  # the SAE sees per-token normalised rows
        sample = layer_norm_in(sample)[0]
    if cfg.data.normalize == "expected_norm":
        mean_norm = float(np.linalg.norm(sample, axis=1).mean())
        if mean_norm == 0:
            raise TrainingError("sampled activations are all zero; check the data source")
        scale = math.sqrt(source.d_in) / mean_norm
    sample = sample * scale
    if cfg.sae.architecture == "ssae":  # b_dec lives after the SSAE's own input norm
        fresh = arch.init_state(cfg.sae.d_sae, d_in=source.d_in)
        sample = np.asarray(arch.normalize_input(fresh, jnp.asarray(sample, jnp.float32), train=True)[0], np.float64)
    return geometric_median(sample).astype(np.float32), scale, whitening


class _StopFlag:
    """Set by SIGTERM or a first Ctrl-C so the loop saves and leaves between steps (a Ctrl-C landing
    inside a step or an orbax wait would leave the state donated or a save half-finished); a
    second Ctrl-C interrupts at once."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def set(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        try:
            for sig in self._SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no handlers, no flag
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = signum
        if signum == signal.SIGINT:
            print("\nCtrl-C: saving at the end of this step (Ctrl-C again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class _MetricsLog:
    """metrics.jsonl, the progress bar and (optionally) Weights & Biases."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, start_step: int):
        self.cfg = cfg
        self.main = jax.process_index() == 0
        if self.main:
            _truncate_metrics(run_dir / "metrics.jsonl", start_step)
        self.file = open(run_dir / "metrics.jsonl", "a") if self.main else None
        self.bar = None
        if self.main and cfg.log.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.wandb = None
        if self.main and cfg.log.wandb_project:
            import wandb  # optional dependency, imported only when asked for

            self.wandb = wandb.init(project=cfg.log.wandb_project, config=cfg.to_dict(),
                                    dir=str(run_dir), resume="allow")
        self.t0, self.step0 = time.perf_counter(), start_step

    def record(self, step: int, metrics: dict[str, float]) -> None:
        done = step + 1
        rate = (done - self.step0) * self.cfg.data.batch_size / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(tok_s=f"{rate:,.0f}", loss=f"{metrics['loss']:.4f}",
                                 l0=f"{metrics['l0']:.1f}", dead=f"{100 * metrics['dead_frac']:.1f}%",
                                 refresh=False)
        if done % self.cfg.log.every == 0 or done == self.cfg.steps:
            line = {"step": done, "tokens": done * self.cfg.data.batch_size, "tokens_per_s": rate} | metrics
            if self.file is not None:
                self.file.write(json.dumps(line) + "\n")
                self.file.flush()
            if self.wandb is not None:
                self.wandb.log(line, step=done)

    def record_eval(self, done: int, metrics: dict[str, float]) -> None:
        """A held-out evaluation's line (``--eval.every``), beside the training lines of the same step."""
        line = {"step": done, "tokens": done * self.cfg.data.batch_size} | metrics
        if self.file is not None:
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()
        if self.wandb is not None:
            self.wandb.log(line, step=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines past ``last_step`` (logged after the checkpoint a run resumes from), so a resumed
    run appends each step once."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a line cut by a kill: dropped
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)


def _set_aside_stale_export(run_dir: Path) -> None:
    """A run about to train further moves its earlier, shorter export out of ``export/`` (to
    ``export-stepN/``), so an interrupted run never leaves an old export that looks current."""
    export = run_dir / "export"
    if jax.process_index() != 0 or not export.is_dir():
        return
    try:
        step = json.loads((export / "cfg.json").read_text())["metadata"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        step = "unknown"
    target, n = run_dir / f"export-step{step}", 1
    while target.exists():
        target, n = run_dir / f"export-step{step}.{n}", n + 1
    export.rename(target)
    print(f"note: moved the earlier export (step {step}) to {target}; export/ is written when this run finishes",
          file=sys.stderr)


def _check_data_width(run_dir: Path, d_in: int) -> None:
    """Refuse to resume on data of another width than the run was started on."""
    path = run_dir / "data_width.json"
    old = json.loads(path.read_text())["d_in"] if path.exists() else d_in
    if old != d_in:
        raise ConfigError(f"{run_dir} was trained on d_in={old} activations but the data source now "
                          f"has d_in={d_in}; point --data.* at the original data or use a new --run-dir")


def _check_transcoder_split(arch, source) -> None:
    """A transcoder's [input | target] split must be where the paired source puts it."""
    split = source.metadata.get(SPLIT_KEY)
    if split is None and isinstance(arch, TranscoderSAE):
        raise ConfigError("a transcoder trains on [input | target] rows: --data.store/--data.npy with --data.target, "
                          "--data.synthetic transcoder, or in memory a sae_jax.data.paired.PairedSource")
    if split is not None and getattr(arch, "d_in", split) != split:
        raise ConfigError(f"the data's rows are [input {split} | target {source.d_in - split}] but the transcoder "
                          f"splits them at {arch.d_in}; set --sae.d-out {source.d_in - split}")



def _check_crosscoder_pair(arch, source) -> None:
    """A crosscoder's two stores must be the same site (layer, hook, width) of two models: otherwise the
    [base | tuned] halves are split in the wrong place or compare unrelated activations."""
    split = source.metadata.get(SPLIT_KEY)
    if not isinstance(arch, CrosscoderSAE) or split is None:
        return  # in-memory [base | tuned] rows: only their even width was checked
    if split != arch.d_model:
        raise ConfigError(f"the crosscoder's base rows have width {split} and its tuned rows {source.d_in - split}: "
                          "--data.store and --data.target must be the same layer and hook of two models of one "
                          "hidden size (one `sae-jax extract --chat-model` pass writes such a pair)")
    meta = source.metadata.get("input", {}), source.metadata.get("target", {})
    for key in ("layer", "hook", "context_length"):
        if key in meta[0] and key in meta[1] and meta[0][key] != meta[1][key]:
            raise ConfigError(f"the crosscoder's base store is {key} {meta[0][key]!r} but its tuned store is "
                              f"{key} {meta[1][key]!r}: pass the same layer and hook of both models "
                              "(base/layerL_hook and chat/layerL_hook of one extraction)")

def _check_config(run_dir: Path, cfg: TrainConfig) -> None:
    path = run_dir / "config.json"
    if path.exists():  # resuming: the run's data order and model must not change
        old = TrainConfig.from_dict(json.loads(path.read_text())).to_dict()  # fields added since: defaults
        new = cfg.to_dict()
        for d in (old, new):
            d["data"].pop("verify")  # a check of the data, not a change of it
        keys = _RESUME_KEYS + (("steps",) if cfg.optim.decay != "none" else ())  # decay length
        diff = [k for k in keys if old.get(k) != new.get(k)]
        if diff:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({', '.join(diff)} differ); "
                f"use a new --run-dir, or delete {run_dir}/checkpoints to start over there")
    if jax.process_index() == 0:
        path.write_text(cfg.to_json())


def _host_metrics(step: int, metrics: dict[str, jax.Array], loader: BatchLoader) -> dict[str, float]:
    """Fetch a step's metrics and stop on bad data or divergence."""
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]):
        return m
    # A NaN/Inf input row makes the loss non-finite too; look at the batch (rare path) to tell which.
    bad = ~np.isfinite(loader.host_batch(step)).all(axis=1)
    if bad.any():
        raise TrainingError(f"the batch at step {step} contains NaN/Inf activations ({bad.sum()} rows); "
                            "find them with sae_jax.data.store.check_finite (or np.isfinite on the .npy) "
                            "and re-extract")
    raise TrainingError(f"loss became {m['loss']} (grad norm {m['grad_norm']}) at step {step}; "
                        "stopped without saving this state: lower --optim.lr or raise "
                        "--optim.warmup-steps, then rerun to resume from the last good checkpoint")


def _resample(state, arch, source, cfg: TrainConfig, rcfg: ResampleConfig, step: int):
    """Resample dead latents toward a deterministic sample of inputs (same on resume)."""
    rows = global_batch_rows(cfg.data.seed + 1, step, rcfg.sample_rows, source.n_rows)
    x = model_input(state, jnp.asarray(source.read(np.sort(rows))), cfg.data.normalize == "layernorm")
    reconstruct = lambda params, xs: arch.decode(params, arch.encode(params, state.arch_state, xs))
    key = jax.random.fold_in(jax.random.key(cfg.seed), step)
    return resample_train_state(state, x, key, rcfg, reconstruct=reconstruct)


def _stopped_message(why: str, saved_step: int | None, run_dir: Path) -> str:
    if saved_step is None:
        return f"{why} before the first checkpoint: nothing saved in {run_dir}; rerun the same command to start again"
    return f"{why}: saved step {saved_step} in {run_dir}; rerun the same command to resume (no export yet)"


def open_run(cfg: TrainConfig, pieces, source, in_memory: bool, statistics, resume_hint: str = "--run-dir"):
    """(checkpointer, state, latest saved step) of ``cfg.run_dir``: a fresh state (config.json and
    data_width.json written; ``statistics()`` gives b_dec, input scale and whitening) or the latest
    intact checkpoint, after checking the run's config and data width."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(str(run_dir / "checkpoints"), cfg.checkpoint)
    latest = ckpt.latest_step()
    if latest is None:
        if jax.process_index() == 0:
            (run_dir / "config.json").write_text(cfg.to_json())
            (run_dir / "data_width.json").write_text(json.dumps({"d_in": source.d_in, "in_memory_source": in_memory}))
        b_dec, scale, whitening = statistics()
        state = create_state(pieces.arch, pieces.optimizer, source.d_in, cfg.sae.d_sae, pieces.mesh, cfg.seed,
                             b_dec, scale, whitening)
        return ckpt, state, latest
    if not cfg.checkpoint.resume:
        raise ConfigError(f"{run_dir} already has checkpoints (step {latest}); pass a new "
                          f"{resume_hint} to start over, or drop --checkpoint.resume False to resume")
    _check_config(run_dir, cfg)
    _check_data_width(run_dir, source.d_in)
    state, latest = ckpt.restore_latest(lambda step: restore_state(ckpt, step, pieces.abstract),
                                        lambda restored: restored.params)
    return ckpt, state, latest


def export_run(run_dir: Path, arch, state, cfg: TrainConfig, in_memory: bool) -> Path:
    """The export a run writes when it reaches its --steps (config and step counts in its metadata)."""
    return export_state(run_dir / "export", arch, state,
                        {"config": cfg.to_dict(), "steps": cfg.steps, "target_steps": cfg.steps}
                        | (IN_MEMORY if in_memory else {}),
                        layer_norm=cfg.data.normalize == "layernorm")


def train(cfg: TrainConfig, source: ActivationSource | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns the final state and metrics.

    ``source`` (e.g. an in-memory ``ArraySource``) replaces the one ``cfg.data`` names; resuming
    such a run needs the same rows again (only their width is checked).
    """
    distributed.maybe_initialize()
    validate(cfg, n_devices=jax.device_count())  # before any data is read
    in_memory = source is not None  # then cfg.data does not describe the rows (export and eval must know)
    full = source if source is not None else open_source(cfg.data)
    source = training_rows(full, cfg.data)
    validate(cfg, d_in=source.d_in, n_devices=jax.device_count(), n_rows=source.n_rows)
    d_in, d_sae = source.d_in, cfg.sae.d_sae
    pieces = assemble(cfg, d_in)
    mesh, arch, optimizer = pieces.mesh, pieces.arch, pieces.optimizer
    _check_transcoder_split(arch, source)
    _check_crosscoder_pair(arch, source)
    heldout = HeldoutEval(cfg, full) if cfg.eval.every else None  # its model loads before any training

    run_dir = Path(cfg.run_dir)
    ckpt, state, latest = open_run(cfg, pieces, source, in_memory, lambda: input_statistics(source, cfg, arch))

    step_fn = make_train_step(cfg, arch, optimizer, mesh, pieces.shardings)
    loader = BatchLoader(source, cfg.data.batch_size, cfg.data.seed, batch_sharding(mesh))
    start = int(state.step)
    if start < cfg.steps:
        _set_aside_stale_export(run_dir)
    log = _MetricsLog(cfg, run_dir, start)
    last: dict[str, float] = {}
    saved_step = latest
    pending = None  # (step, device metrics) not yet fetched

    def consume():
        nonlocal pending, last
        if pending is not None:
            step, metrics = pending
            last = _host_metrics(step, metrics, loader)  # raises on bad data or divergence
            pending = None  # only once checked: an interrupt during the fetch re-checks it
            log.record(step, last)

    resample = ResampleConfig(every=cfg.sae.resample_every, dead_window=cfg.sae.dead_tokens,
                              mode=cfg.sae.resample_mode)
    batches = loader.iter_from(start)  # background thread reads ahead while the device computes
    try:
        with _StopFlag() as stop:
            for step in range(start, cfg.steps):
                _, batch = next(batches)
                state, metrics = step_fn(state, batch)
                consume()  # the previous step's metrics, while this one runs
                pending = (step, metrics)
                done = step + 1
                if resample.due(done):
                    state, count = _resample(state, arch, source, cfg, resample, done)
                    state = jax.device_put(state, pieces.shardings)  # back to the step's layout
                    metrics["resampled"] = count
                if heldout is not None and (done % cfg.eval.every == 0 or done == cfg.steps):
                    consume()
                    sae = state_sae(arch, state, layer_norm=cfg.data.normalize == "layernorm")  # every process
                    if sae is not None:
                        log.record_eval(done, heldout(sae))
                if done % cfg.checkpoint.every == 0 or done == cfg.steps or stop.set:
                    consume()
                    ckpt.save(done, state)
                    saved_step = done
                if stop.set:
                    break
            consume()
    except KeyboardInterrupt:
        try:
            consume()
            # Ctrl-C inside step_fn lands after the state was donated: then keep the last checkpoint.
            alive = not any(leaf.is_deleted() for leaf in jax.tree.leaves(state) if isinstance(leaf, jax.Array))
            if alive and int(state.step) != saved_step and all_finite(state.params):
                ckpt.save(int(state.step), state)
                saved_step = int(state.step)
        finally:
            ckpt.wait()
        raise Interrupted(_stopped_message("interrupted (Ctrl-C)", saved_step, run_dir), 130) from None
    finally:
        batches.close()
        log.close()
        ckpt.wait()
    ckpt.close()
    if stop.set and int(state.step) < cfg.steps:
        if stop.signum == signal.SIGINT:
            raise Interrupted(_stopped_message("interrupted (Ctrl-C)", saved_step, run_dir), 130)
        raise Interrupted(_stopped_message("stopped by SIGTERM", saved_step, run_dir), 143)

    export_dir = None
    if int(state.step) == cfg.steps:  # every process joins the gather; process 0 writes
        export_dir = export_run(run_dir, arch, state, cfg, in_memory)
    return TrainResult(state=state, arch=arch, metrics=last, run_dir=run_dir, export_dir=export_dir)
