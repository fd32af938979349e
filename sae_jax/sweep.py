"""Many SAEs per pass over the data: ``train_sweep(configs)`` / ``sae-jax sweep``.

The members share one data stream (source, batch size, batch seed, held-out tail, steps, mesh): one
``BatchLoader`` reads each batch once and every member steps on that same device batch. Members whose
states have the same structure and static settings (same architecture and shapes; they may differ in
seed, learning rate and L1/L0 coefficient) are stacked along a leading axis and stepped by ONE jitted
``jax.vmap`` of the library's step (``make_step_fn``); the others are stepped in turn with the trainer's
own jitted step. Each member keeps its own run dir (config.json, metrics.jsonl, checkpoints/, export/)
written as ``sae_jax.trainer.train`` writes it, so a member resumes, or is continued alone by
``sae-jax train``, exactly like a run trained alone; a member whose run already finished is reused, not
retrained.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from sae_jax import distributed
from sae_jax.assemble import assemble
from sae_jax.checkpoint import Checkpointer
from sae_jax.config import ConfigError, TrainConfig, validate
from sae_jax.data.loader import BatchLoader
from sae_jax.data.open import open_source, training_rows
from sae_jax.data.source import ActivationSource
from sae_jax.errors import Interrupted
from sae_jax.export import state_sae
from sae_jax.heldout import HeldoutEval
from sae_jax.mesh import batch_sharding, replicated
from sae_jax.optim import make_optimizer
from sae_jax.resample import ResampleConfig
from sae_jax.train_step import make_step_fn, make_train_step
from sae_jax.trainer import (TrainingError, TrainResult, _check_crosscoder_pair, _check_transcoder_split,
                             _host_metrics, _MetricsLog, _resample, _set_aside_stale_export, _StopFlag, export_run,
                             input_statistics, open_run)

# What every member must share: the rows, their order and the batch layout (one loader for all).
_DATA_PER_MEMBER = ("normalize", "n_stat_rows", "whiten", "whiten_eps", "verify")  # member-side preprocessing


def _shared_fields(cfg: TrainConfig) -> dict[str, Any]:
    data = {f.name: getattr(cfg.data, f.name) for f in dataclasses.fields(cfg.data) if f.name not in _DATA_PER_MEMBER}
    return {f"data.{k}": v for k, v in data.items()} | {"steps": cfg.steps, "mesh": cfg.mesh}


def check_members(configs: list[TrainConfig]) -> None:
    """Raise ConfigError unless the members can share one data stream and have distinct run dirs."""
    if not configs:
        raise ConfigError("a sweep needs at least one member config")
    first = _shared_fields(configs[0])
    for i, cfg in enumerate(configs[1:], 1):
        for name, value in _shared_fields(cfg).items():
            if value != first[name]:
                raise ConfigError(
                    f"sweep members share one data stream, but {name} differs: member 0 ({configs[0].run_dir}) has "
                    f"{first[name]!r}, member {i} ({cfg.run_dir}) has {value!r}; set {name} in the base config, "
                    "not per member (or train such members in separate sweeps)")
    dirs = [str(Path(c.run_dir).resolve()) for c in configs]
    for i, d in enumerate(dirs):
        if d in dirs[:i]:
            raise ConfigError(f"sweep members {dirs.index(d)} and {i} share the run dir {configs[i].run_dir}; "
                              "give each member its own run_dir")


def _stack_key(cfg: TrainConfig, arch, start: int) -> str | None:
    """Members with equal keys have states of one structure and one static step: they can be stacked.
    The seed (init), peak lr and sparsity coefficient are per member (traced); None: never stacked."""
    if cfg.sae.architecture == "ssae" or cfg.sae.resample_every or type(arch).__name__.startswith("Sparse"):
        # constrained optimizer / host-side resampling / sparse TopK kernels (their ffi_call has no vmap
        # rule): stepped in turn. Dictionary-sharded meshes stack (checked on a (4, 2) mesh).
        return None
    d = cfg.to_dict()
    d["run_dir"], d["seed"], d["checkpoint"], d["log"], d["eval"] = "", 0, {}, {}, {}
    d["optim"]["lr"] = None
    d["sae"]["sparsity_coef"] = 0.0
    for name in ("n_stat_rows", "whiten_eps", "verify"):  # state values only, not the step
        d["data"].pop(name)
    return json.dumps(d, sort_keys=True) + f"@{start}"


@dataclasses.dataclass
class _Member:
    index: int
    cfg: TrainConfig
    pieces: Any
    ckpt: Checkpointer
    state: Any  # its own TrainState (None while stacked in a group)
    start: int
    saved_step: int | None
    heldout: HeldoutEval | None = None
    log: _MetricsLog | None = None
    last: dict = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)


def _stacked_shardings(shardings):
    return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), shardings)


class _Group:
    """Members stepped together: one member with the trainer's own jitted step, or several stacked."""

    def __init__(self, members: list[_Member]):
        self.members = members
        self.start = members[0].start
        self.pending = None  # (step, device metrics) not yet fetched
        lead = members[0]
        pieces, mesh = lead.pieces, lead.pieces.mesh
        if len(members) == 1:
            self.state = lead.state
            self._step = make_train_step(lead.cfg, pieces.arch, pieces.optimizer, mesh, pieces.shardings)
            return
        self.shardings = _stacked_shardings(pieces.shardings)
        states = [m.state for m in members]
        for m in members:
            m.state = None
        self.state = jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s),
                             out_shardings=self.shardings)(*states)
        del states
        self.hypers = (jnp.asarray([m.cfg.lr for m in members], jnp.float32),
                       jnp.asarray([m.cfg.sae.sparsity_coef for m in members], jnp.float32))
        cfg0, arch = lead.cfg, pieces.arch

        def one(state, lr, coef, batch):
            cfg = dataclasses.replace(cfg0, optim=dataclasses.replace(cfg0.optim, lr=lr),
                                      sae=dataclasses.replace(cfg0.sae, sparsity_coef=coef))
            return make_step_fn(cfg, arch, make_optimizer(cfg))(state, batch)

        rep = replicated(mesh)
        self._step = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)),
                             in_shardings=(self.shardings, rep, rep, batch_sharding(mesh)),
                             out_shardings=(self.shardings, rep), donate_argnums=0)
        self._take = jax.jit(lambda s, i: jax.tree.map(lambda x: x[i], s), out_shardings=pieces.shardings)

    @property
    def stacked(self) -> bool:
        return len(self.members) > 1

    def step(self, batch):
        if self.stacked:
            self.state, metrics = self._step(self.state, *self.hypers, batch)
        else:
            self.state, metrics = self._step(self.state, batch)
        return metrics

    def member_state(self, i: int):
        return self._take(self.state, jnp.int32(i)) if self.stacked else self.state

    def member_metrics(self, metrics, i: int):
        return {k: v[i] for k, v in metrics.items()} if self.stacked else metrics


def _prepare(cfg: TrainConfig, index: int, source, in_memory: bool, stats_cache: dict) -> _Member:
    """A member's pieces and state (fresh or restored), with the checks and files ``train`` makes."""
    d_in = source.d_in
    validate(cfg, d_in=d_in, n_devices=jax.device_count(), n_rows=source.n_rows)
    pieces = assemble(cfg, d_in)
    _check_transcoder_split(pieces.arch, source)
    _check_crosscoder_pair(pieces.arch, source)
    key = None if cfg.sae.architecture == "ssae" else json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)

    def statistics():  # members with the same data settings share the sample
        if key is None:
            return input_statistics(source, cfg, pieces.arch)
        if key not in stats_cache:
            stats_cache[key] = input_statistics(source, cfg, pieces.arch)
        return stats_cache[key]

    ckpt, state, latest = open_run(cfg, pieces, source, in_memory, statistics,
                                   resume_hint="run_dir for that member")
    return _Member(index, cfg, pieces, ckpt, state, int(state.step), latest)


def train_sweep(configs: list[TrainConfig], source: ActivationSource | None = None,
                stack: bool = True) -> list[TrainResult]:
    """Train (or resume) every member of a sweep with one pass over the shared data; one TrainResult
    per member, in order. A member whose run already finished is reused (its export is written only if
    missing). Members that diverge are dropped (their last good checkpoint kept) while the others go
    on; a TrainingError naming them is raised at the end. ``stack=False`` steps every member in turn
    with the trainer's own step (bit for bit a solo run; on CPU faster than the vmapped step, see
    benchmarks/results_sweep_throughput.json).
    """
    distributed.maybe_initialize()
    configs = list(configs)
    check_members(configs)
    for cfg in configs:
        validate(cfg, n_devices=jax.device_count())
    in_memory = source is not None
    full = source if source is not None else open_source(configs[0].data)
    source = training_rows(full, configs[0].data)
    steps = configs[0].steps
    stats_cache: dict = {}
    members = [_prepare(cfg, i, source, in_memory, stats_cache) for i, cfg in enumerate(configs)]
    active = [m for m in members if m.start < steps]
    for m in active:
        m.heldout = HeldoutEval(m.cfg, full) if m.cfg.eval.every else None

    groups: list[_Group] = []
    by_key: dict[str, list[_Member]] = {}
    for m in active:
        key = _stack_key(m.cfg, m.pieces.arch, m.start) if stack else None
        if key is None:
            groups.append(_Group([m]))
        else:
            by_key.setdefault(key, []).append(m)
    groups += [_Group(ms) for ms in by_key.values()]
    if groups and jax.process_index() == 0:
        plan = "; ".join(("stacked " if g.stacked else "") + ", ".join(str(m.run_dir) for m in g.members)
                         for g in groups)
        print(f"sweep: {len(active)} members to train in {len(groups)} step programs: {plan}", file=sys.stderr)

    loader = BatchLoader(source, configs[0].data.batch_size, configs[0].data.seed,
                         batch_sharding(members[0].pieces.mesh))
    start = min((g.start for g in groups), default=steps)
    for m in active:
        _set_aside_stale_export(m.run_dir)
        quiet = dataclasses.replace(m.cfg, log=dataclasses.replace(m.cfg.log, progress=False))
        m.log = _MetricsLog(quiet, m.run_dir, m.start)
    bar = None
    if active and configs[0].log.progress and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True,
                   desc=f"sweep of {len(active)} ({len(groups)} step programs)")

    def consume(g: _Group):
        if g.pending is None:
            return
        step, metrics = g.pending
        g.pending = None
        host = jax.device_get(metrics)
        for i, m in enumerate(g.members):
            if m.error is not None:
                continue
            try:
                m.last = _host_metrics(step, g.member_metrics(host, i), loader)
            except TrainingError as err:  # this member only: the others go on
                m.error = str(err)
                print(f"sweep member {m.index} ({m.run_dir}) stopped: {err}", file=sys.stderr)
                continue
            m.log.record(step, m.last)

    stop = None
    try:
        with _StopFlag() as stop:
            batches = loader.iter_from(start)
            try:
                for step in range(start, steps):
                    _, batch = next(batches)
                    done = step + 1
                    stopping = stop.set  # read once: every member saves at the same step
                    for g in groups:
                        if step < g.start:
                            continue
                        metrics = g.step(batch)
                        consume(g)
                        g.pending = (step, metrics)
                        for i, m in enumerate(g.members):
                            _member_cadence(g, i, m, done, source, stopping, consume)
                    if bar is not None:
                        bar.update(done - bar.n)
                    if stopping:
                        break
                for g in groups:
                    consume(g)
            finally:
                batches.close()
    except KeyboardInterrupt:
        saved = ", ".join(f"{m.run_dir} at step {m.saved_step}" for m in members if m.saved_step is not None)
        raise Interrupted(f"sweep interrupted (Ctrl-C): latest checkpoints {saved or 'none'}; rerun the same "
                          "command to resume", 130) from None
    finally:
        if bar is not None:
            bar.close()
        for m in active:
            m.log.close()
        for m in members:
            m.ckpt.wait()
    for m in members:
        m.ckpt.close()

    final = {m.index: g.member_state(i) for g in groups for i, m in enumerate(g.members)}
    if stop is not None and stop.set and any(int(s.step) < steps for s in final.values()):
        why = "interrupted (Ctrl-C)" if stop.signum == signal.SIGINT else "stopped by SIGTERM"
        dirs = ", ".join(str(m.run_dir) for m in active)
        raise Interrupted(f"sweep {why}: every member saved its latest step ({dirs}); rerun the same command "
                          "to resume", 130 if stop.signum == signal.SIGINT else 143)
    results = []
    for m in members:
        state = final.get(m.index, m.state)
        export_dir = None
        if m.error is None and int(state.step) == steps:
            done_before = m.start == steps and (m.run_dir / "export" / "cfg.json").exists()
            export_dir = m.run_dir / "export" if done_before else export_run(m.run_dir, m.pieces.arch, state, m.cfg, in_memory)
        results.append(TrainResult(state=state, arch=m.pieces.arch, metrics=m.last, run_dir=m.run_dir,
                                   export_dir=export_dir))
    failed = [m for m in members if m.error is not None]
    if failed:
        raise TrainingError("; ".join(f"member {m.index} ({m.run_dir}): {m.error}" for m in failed)
                            + " (the other members finished and were exported)")
    return results


def _member_cadence(g: _Group, i: int, m: _Member, done: int, source, stopping: bool, consume) -> None:
    """Resampling, held-out evaluation and checkpoints of one member after a step, as ``train`` does."""
    if m.error is not None:
        return
    cfg = m.cfg
    resample = ResampleConfig(every=cfg.sae.resample_every, dead_window=cfg.sae.dead_tokens,
                              mode=cfg.sae.resample_mode)
    if resample.due(done):  # resampling members are never stacked
        state, count = _resample(g.state, m.pieces.arch, source, cfg, resample, done)
        g.state = jax.device_put(state, m.pieces.shardings)
        step, metrics = g.pending
        g.pending = (step, metrics | {"resampled": count})
    if m.heldout is not None and (done % cfg.eval.every == 0 or done == cfg.steps):
        consume(g)
        sae = state_sae(m.pieces.arch, g.member_state(i), layer_norm=cfg.data.normalize == "layernorm")
        if sae is not None and m.error is None:
            m.log.record_eval(done, m.heldout(sae))
    if done % cfg.checkpoint.every == 0 or done == cfg.steps or stopping:
        consume(g)
        if m.error is None:
            m.ckpt.save(done, g.member_state(i))
            m.saved_step = done


def member_configs(base: TrainConfig, overrides: list[dict[str, Any]]) -> list[TrainConfig]:
    """One TrainConfig per override dict applied to ``base``: keys are dotted field names
    (``"sae.k": 16``, ``"optim.lr": 1e-3``) or nested dicts; a member without ``run_dir`` gets
    ``<base.run_dir>/<index>``."""
    if not isinstance(overrides, list) or not all(isinstance(o, dict) for o in overrides):
        raise ConfigError("a sweep file holds a list of members, each a mapping of config fields to values "
                          '(e.g. [{"sae.k": 16}, {"sae.k": 32}])')
    configs = []
    for i, override in enumerate(overrides):
        d = copy.deepcopy(base.to_dict())
        d["run_dir"] = str(Path(base.run_dir) / str(i))
        for key, value in _flatten(override).items():
            *path, leaf = key.split(".")
            node = d
            for part in path:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"sweep member {i}: unknown config field {key!r}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"sweep member {i}: unknown config field {key!r} (fields are named as in "
                                  "config.json, e.g. sae.k, optim.lr, run_dir)")
            node[leaf] = value
        try:
            configs.append(TrainConfig.from_dict(d))
        except TypeError as err:
            raise ConfigError(f"sweep member {i}: {err}") from None
    return configs


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, dict):
            out |= _flatten(value, name + ".")
        else:
            out[name] = value
    return out


def load_members(path: str | Path) -> list[dict[str, Any]]:
    """The member list of a sweep file (.json, or .yaml/.yml when PyYAML is installed)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sweep file {path} not found; write a JSON list of member overrides, "
                          'e.g. [{"sae.k": 16}, {"sae.k": 32}]')
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"sweep file {path} is not valid JSON ({err})") from None
    if isinstance(data, dict) and "members" in data:
        data = data["members"]
    return data
