"""Typed, frozen run configuration, composed per subsystem.

Configs are never mutated: use ``dataclasses.replace``. Derived values are properties.
``validate`` checks what can be checked before any array exists and raises ``ConfigError``
naming the field and the fix.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal


from sae_jax.errors import ConfigError  # noqa: E402  (re-exported: its historical home)


Architecture = Literal["topk", "batchtopk", "relu", "jumprelu", "ssae", "matryoshka_batchtopk", "gated",
                       "transcoder", "skip_transcoder", "crosscoder"]
# Architectures whose rows are [input | target] pairs (a transcoder maps one hook's activations to another's).
TRANSCODERS = ("transcoder", "skip_transcoder")


@dataclass(frozen=True)
class DataConfig:
    """Where activations come from and how batches are drawn."""

    store: str = ""
    """Path or tensorstore URL of an activation store (from `sae-jax extract`)."""
    npy: str = ""
    """Path of a .npy activation file (n_rows, d_in); used when no store is given."""
    cast: bool = False
    """Accept a .npy of non-float values (e.g. int32) and read it as float32; refused otherwise."""
    verify: bool = False
    """Check every shard of the store against the digests recorded at extraction before training
    (a full read; opening a store always checks that no shard file is missing)."""
    batch_size: int = 4096
    """Global batch size in tokens (split over the mesh's 'data' axis)."""
    seed: int = 0
    """Seed of the batch order; the batch at step t is a pure function of (seed, t)."""
    holdout_fraction: float = 0.1
    """Share of rows at the end of the source never trained on (what `sae-jax eval` holds out by default)."""
    normalize: Literal["none", "expected_norm", "layernorm"] = "expected_norm"
    """Input normalisation: 'expected_norm' scales inputs so E||x|| = sqrt(d_in) (folded into the exported
    weights); 'layernorm' normalises each token (SAELens normalize_activations='layer_norm', exported as such)."""
    n_stat_rows: int = 16384
    """Rows sampled for the input scale, the whitening and the geometric-median init of b_dec."""
    difference: Literal["none", "paired", "sequential"] = "none"
    """Train on differences: 'paired' rows are second − first (z(s2) − z(s1), or chat − base: two aligned
    sources), 'sequential' rows are z[i+1] − z[i] of one source (across text boundaries too: store one text
    per row, e.g. `extract --pooling`, for per-text steps); 'none' trains on the rows themselves."""
    second: str = ""
    """With difference='paired': the 'after' source, of the same kind as the first (--data.store or --data.npy),
    aligned row by row."""
    target: str = ""
    """Transcoders: the target source (e.g. the mlp_out store of the same extraction as the --data.store
    mlp input), of the same kind as the first source and aligned row by row; rows become [input | target]."""
    whiten: bool = False
    """ZCA-whiten inputs, fitted on the statistics sample; kept in the checkpoint and folded into the export
    where the input path is affine (otherwise written beside it as whitening.safetensors)."""
    whiten_eps: float = 1e-5
    """Eigenvalue floor of the whitening; keep it above the noise eigenvalues, or whitening blows pure-noise
    directions up to unit variance."""
    synthetic: Literal["features", "shifts", "transcoder"] = "features"
    """Synthetic data (used when neither store nor npy is given): 'features' = sparse sums of dictionary atoms;
    'shifts' = multi-concept shifts Δz = Σ_j c_j a_j with signed c (for the shift autoencoder);
    'transcoder' = [x | y] pairs with shared sparse codes, x = s D_in, y = s D_out (+ x A^T for skip_transcoder)."""
    synthetic_d_in: int = 64
    """Synthetic data (used when neither store nor npy is given): input width."""
    synthetic_n_features: int = 256
    """Synthetic data: number of true unit-norm dictionary atoms (concepts, for 'shifts')."""
    synthetic_k: int = 4
    """Synthetic data: expected active atoms (concepts) per row."""
    synthetic_n_rows: int = 131072
    """Synthetic data: rows generated."""
    synthetic_noise: float = 0.01
    """Synthetic data: std of isotropic Gaussian noise added to each row."""
    synthetic_seed: int = 0
    """Synthetic data: seed of the dataset (dictionary, codes, noise); --data.seed only orders the batches."""
    synthetic_skip: float = 0.0
    """Synthetic transcoder pairs: norm of a dense input component carried to the target by a linear map
    (what a skip-transcoder's W_skip is for); 0 = none."""


@dataclass(frozen=True)
class SSAEConfig:
    """The sparse shift autoencoder (architecture 'ssae'): sparsity is the hard constraint
    Σ|h| / (batch·F) <= level, enforced by the dual player (``TrainConfig.dual``)."""

    target: float = 0.1
    """Final level of the constraint Σ|h| / (batch·F) <= target (a share of active latents for constraint='l0')."""
    warmup: int = 2000
    """Steps without constraint (the dense level is measured meanwhile)."""
    schedule: int = 5000
    """Steps of linear decrease of the level from the dense level to target."""
    input_norm: Literal["layernorm", "batch", "none"] = "layernorm"
    """Input normalisation: per-row LayerNorm (no affine), per-feature batch statistics, or none."""
    code_norm: Literal["none", "layernorm", "batchnorm"] = "none"
    """Normalisation of the code before the decoder (affine code_gamma/code_beta when on). 'layernorm' (the
    original method's normalised code) exports as sae_jax's 'code_layernorm' architecture, which sae_jax.load
    reads and SAELens does not (its encoder is not linear)."""
    relu: bool = False
    """ReLU on the code (non-negative codes); off for signed shifts."""
    constraint: Literal["l1", "l0"] = "l1"
    """l1: Σ|h|/(B·F) <= level. l0 (needs relu): the share of nonzero h <= level, enforced by
    the dual on the true (non-differentiable) L0 share while the primal follows Σ|h|/(B·F)."""
    loss_type: Literal["relative", "absolute"] = "relative"
    """relative: mean_b ||x - x̂||² / ||x||²; absolute: mean of squared errors."""
    eps: float = 1e-5
    """Variance epsilon of the normalisations."""
    momentum: float = 0.01
    """EMA rate of running statistics and of the measured dense level."""
    export_as: Literal["linear", "split"] = "linear"
    """A signed (no-ReLU) code exports as architecture 'linear' (F latents; sae_jax.load reads it), or
    'split': SAELens 'standard' with 2F latents, h = relu(pre) − relu(−pre) (what SAELens can load)."""

    def __post_init__(self):
        checks = {
            "input_norm": (self.input_norm, ("layernorm", "batch", "none")),
            "code_norm": (self.code_norm, ("none", "layernorm", "batchnorm")),
            "constraint": (self.constraint, ("l1", "l0")),
            "loss_type": (self.loss_type, ("relative", "absolute")),
            "export_as": (self.export_as, ("linear", "split")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"ssae.{name}={value!r} is not one of {allowed}")
        if self.constraint == "l0" and not self.relu:
            raise ConfigError("ssae.constraint='l0' needs ssae.relu=True: a linear code is never exactly zero")
        if self.constraint == "l0" and self.target > 1:
            raise ConfigError(f"with ssae.constraint='l0' the target is a share of active latents in (0, 1], "
                              f"got {self.target}")
        if self.target <= 0:
            raise ConfigError(f"ssae.target must be > 0 (a level of Σ|h|/(B·F)), got {self.target}")
        if self.warmup < 0 or self.schedule < 0:
            raise ConfigError("ssae.warmup and ssae.schedule must be >= 0")


@dataclass(frozen=True)
class DualConfig:
    """The dual player of constrained training (architecture 'ssae'): ascent on the Lagrange multiplier."""

    lr: float = 1e-2
    """Dual learning rate."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """Optimizer of the multiplier."""
    scheme: Literal["simultaneous", "alternating", "extragradient"] = "simultaneous"
    """Primal–dual update scheme. With an Adam primal, extragradient enforces the constraint at
    the look-ahead point, which sat ~8% off the target at the actual parameters in
    experiments/ssae_identifiability (correlated concepts); simultaneous hit it within 0.5%."""
    formulation: Literal["lagrangian", "augmented_lagrangian"] = "lagrangian"
    """Lagrangian, or augmented Lagrangian (PHR; use an SGD dual whose rate equals penalty_init)."""
    penalty_init: float = 1.0
    """Augmented Lagrangian: initial penalty coefficient ρ."""
    penalty_growth: float = 1.0
    """Augmented Lagrangian: ρ is multiplied by this every step the constraint is violated (1 = fixed)."""
    fixed_multiplier: float | None = None
    """If set, the multiplier is frozen at this value: an L1-penalised SAE (for comparisons). The penalty
    acts once the constraint is on (after --sae.ssae.warmup; set it to 0 for a penalty from the start)."""


@dataclass(frozen=True)
class SAEConfig:
    """The autoencoder itself."""

    architecture: Architecture = "topk"
    """topk (k per token), batchtopk (k*batch over the batch), relu (ReLU + L1), jumprelu (L0),
    ssae (shift autoencoder: sparsity as a hard constraint, see --sae.ssae.* and --dual.*),
    matryoshka_batchtopk (BatchTopK whose nested prefixes each reconstruct), gated (gate/magnitude paths, L1 on
    the gate), transcoder / skip_transcoder (ReLU + L1 map from input rows to target rows, --data.target),
    crosscoder (BatchTopK crosscoder on [base | tuned] rows: --data.store base, --data.target tuned)."""
    d_sae: int = 1024
    """Number of latents F."""
    k: int = 32
    """Active latents per token for topk/batchtopk."""
    k_aux: int = 0
    """Dead latents used by the AuxK loss; 0 means d_in // 2."""
    auxk_coef: float = 1 / 32
    """AuxK loss coefficient (topk/batchtopk); 0 disables AuxK."""
    dead_tokens: int = 10_000_000
    """A latent is dead if it has not fired in this many tokens."""
    sparsity_coef: float = 1.0
    """L1 coefficient (relu) or L0 coefficient (jumprelu)."""
    sparsity_warmup_steps: int = 0
    """Steps over which the L1/L0 coefficient rises linearly from 0."""
    jumprelu_bandwidth: float = 0.001
    """Width of the rectangle kernel of the JumpReLU pseudo-derivative."""
    jumprelu_init_threshold: float = 0.001
    """Initial JumpReLU threshold."""
    batchtopk_threshold_lr: float = 0.01
    """EMA rate of the BatchTopK inference threshold (min positive selected activation)."""
    matryoshka_widths: tuple[int, ...] = ()
    """matryoshka_batchtopk: strictly increasing prefix sizes that each reconstruct the input; d_sae is
    appended as the last level if missing (empty: F/16, F/8, F/4, F/2, F)."""
    d_out: int = 0
    """Transcoders: width of the target rows (0: the same as the input rows, e.g. MLP input -> MLP output)."""
    resample_every: int = 0
    """Anthropic-style resampling of dead latents every this many steps (0 disables; usual for relu/jumprelu)."""
    resample_mode: Literal["loss", "random"] = "loss"
    """Resampled directions: inputs drawn with probability ∝ reconstruction loss², or random."""
    decoder_unit_norm: bool = True
    """Keep decoder rows at unit L2 norm (gradient projection + renormalisation)."""
    recon_loss: Literal["fvu", "mse"] = "fvu"
    """Reconstruction loss: FVU (scale-free) or per-token MSE."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """Matmul input dtype; master weights and accumulation stay float32."""
    impl: Literal["dense", "sparse", "auto"] = "auto"
    """TopK / BatchTopK kernels: dense matmuls, gathered sparse kernels, or pick by backend."""
    topk_method: Literal["auto", "lax", "chunked", "native"] = "auto"
    """Top-k selection of the sparse kernels: native C++ (XLA:CPU), chunk-maxima pruning, or
    ``lax.top_k``; auto picks native on CPU, chunked on GPU, lax on TPU (docs/performance.md)."""
    ssae: SSAEConfig = field(default_factory=SSAEConfig)
    """The shift autoencoder's settings (architecture 'ssae' only)."""

    def __post_init__(self):
        # JSON gives a list back; a tuple keeps configs comparable (resume) and hashable
        object.__setattr__(self, "matryoshka_widths", tuple(int(w) for w in self.matryoshka_widths))

    @property
    def matryoshka_levels(self) -> tuple[int, ...]:
        """The Matryoshka prefix sizes actually trained, ending at d_sae."""
        widths = self.matryoshka_widths or tuple(self.d_sae // 2**i for i in (4, 3, 2, 1))
        widths = tuple(w for w in widths if w > 0)
        return widths if widths and widths[-1] == self.d_sae else widths + (self.d_sae,)


@dataclass(frozen=True)
class OptimConfig:
    """Adam with warmup, optional decay and clipping."""

    lr: float | None = None
    """Peak learning rate; None uses 8e-4 / sqrt(d_sae / 2**14) for topk, 2e-4 / sqrt(d_sae / 2**14) otherwise."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    decay: Literal["none", "linear", "cosine"] = "none"
    """Decay after warm-up, to final_lr_fraction * lr at the last step."""
    final_lr_fraction: float = 0.0
    """Learning rate at the end of decay, as a fraction of the peak."""
    b1: float = 0.9
    """Adam beta1."""
    b2: float = 0.999
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""
    max_grad_norm: float = 0.0
    """Global gradient-norm clip; 0 disables."""


@dataclass(frozen=True)
class MeshConfig:
    """Device layout: a ('data', 'dict') mesh."""

    data: int = -1
    """Devices on the data axis; -1 = all devices / dict."""
    dict: int = 1
    """Devices on the dictionary axis (shards W_enc, W_dec, b_enc, thresholds, dead counters)."""

    def shape(self, n_devices: int) -> tuple[int, int]:
        """(data, dict) axis sizes over ``n_devices``; ConfigError if they do not use them all."""
        data = self.data if self.data > 0 else n_devices // self.dict
        if data * self.dict != n_devices:
            raise ConfigError(
                f"mesh data={data} x dict={self.dict} does not use the {n_devices} devices; "
                "set --mesh.data/--mesh.dict so their product is the device count")
        return data, self.dict


@dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints and resume."""

    every: int = 500
    """Save every this many steps (and at the end)."""
    keep: int = 3
    """Checkpoints kept."""
    resume: bool = True
    """Resume from the latest checkpoint in the run directory if there is one."""


@dataclass(frozen=True)
class LogConfig:
    """Logging cadence and sinks."""

    every: int = 10
    """Write a metrics line every this many steps."""
    progress: bool = True
    """Show a progress bar."""
    wandb_project: str = ""
    """Weights & Biases project; empty disables W&B."""


@dataclass(frozen=True)
class HeldoutEvalConfig:
    """Evaluation on a fixed held-out sample while training (off by default)."""

    every: int = 0
    """Every this many steps (and at the last step): FVU, L0, dead fraction on the held-out sample; 0 disables."""
    n_rows: int = 4096
    """Rows of the held-out tail (data.holdout_fraction) in the fixed sample: its first rows."""
    splice: bool = False
    """Also CE loss recovered and KL with the SAE spliced into the store's model (loads the model once;
    needs a store written by `sae-jax extract` whose texts are installed)."""
    n_texts: int = 8
    """Held-out texts (all their tokens in the held-out tail) for the splice."""


# Default peak lr at F = 2^14 (scaled by 1/sqrt(F / 2^14)). TopK: 4x Gao et al.'s / sparsify's 2e-4, which
# gave the lowest held-out FVU at the demo's budget (docs/recipe.md: 0.202 vs 0.229; 8x: more dead latents).
# The other architectures keep 2e-4 until measured the same way.
LR_AT_16K = {"topk": 8e-4}


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    run_dir: str = "runs/default"
    """Run directory: config.json, metrics.jsonl, checkpoints/, export/."""
    steps: int = 1000
    """Optimizer steps."""
    seed: int = 0
    """Parameter-init seed."""
    data: DataConfig = field(default_factory=DataConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: HeldoutEvalConfig = field(default_factory=HeldoutEvalConfig)
    dual: DualConfig = field(default_factory=DualConfig)

    @property
    def lr(self) -> float:
        """The peak learning rate; default c / sqrt(F / 2^14), c = 8e-4 for topk, 2e-4 otherwise."""
        if self.optim.lr is not None:
            return self.optim.lr
        return LR_AT_16K.get(self.sae.architecture, 2e-4) / math.sqrt(self.sae.d_sae / 2**14)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        subs = {f.name: f.type for f in dataclasses.fields(cls)}
        kinds = {"data": DataConfig, "sae": SAEConfig, "optim": OptimConfig, "mesh": MeshConfig,
                 "checkpoint": CheckpointConfig, "log": LogConfig, "dual": DualConfig,
                 "eval": HeldoutEvalConfig}
        kwargs = {}
        for key, value in d.items():
            if key not in subs:
                raise ConfigError(f"unknown config field {key!r}")
            if key == "sae" and isinstance(value.get("ssae"), dict):
                value = value | {"ssae": SSAEConfig(**value["ssae"])}
            kwargs[key] = kinds[key](**value) if key in kinds else value
        return cls(**kwargs)


def _ranges(cfg: TrainConfig) -> list[tuple[str, Any, bool, str]]:
    """(field, value, ok, allowed range) for every field with a limited range."""
    d, s, o = cfg.data, cfg.sae, cfg.optim
    return [
        ("steps", cfg.steps, cfg.steps >= 1, ">= 1"),
        ("optim.lr", o.lr, o.lr is None or (math.isfinite(o.lr) and o.lr > 0), "> 0 (or unset for the default)"),
        ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, ">= 0"),
        ("optim.final_lr_fraction", o.final_lr_fraction, 0 <= o.final_lr_fraction <= 1, "in [0, 1]"),
        ("optim.b1", o.b1, 0 <= o.b1 < 1, "in [0, 1)"),
        ("optim.b2", o.b2, 0 <= o.b2 < 1, "in [0, 1)"),
        ("optim.eps", o.eps, o.eps > 0, "> 0"),
        ("optim.max_grad_norm", o.max_grad_norm, o.max_grad_norm >= 0, ">= 0 (0 disables clipping)"),
        ("checkpoint.keep", cfg.checkpoint.keep, cfg.checkpoint.keep >= 1, ">= 1 (a checkpoint to resume from)"),
        ("data.n_stat_rows", d.n_stat_rows, d.n_stat_rows >= 1, ">= 1"),
        ("data.seed", d.seed, d.seed >= 0, ">= 0"),
        ("data.synthetic_seed", d.synthetic_seed, d.synthetic_seed >= 0, ">= 0"),
        ("seed", cfg.seed, cfg.seed >= 0, ">= 0"),
        ("data.synthetic_d_in", d.synthetic_d_in, d.synthetic_d_in >= 1, ">= 1"),
        ("data.synthetic_n_features", d.synthetic_n_features, d.synthetic_n_features >= 1, ">= 1"),
        ("data.synthetic_k", d.synthetic_k, d.synthetic_k >= 1, ">= 1"),
        ("data.synthetic_n_rows", d.synthetic_n_rows, d.synthetic_n_rows >= 1, ">= 1"),
        ("data.synthetic_noise", d.synthetic_noise, d.synthetic_noise >= 0, ">= 0"),
        ("sae.k_aux", s.k_aux, s.k_aux >= 0, ">= 0 (0 = d_in // 2)"),
        ("sae.auxk_coef", s.auxk_coef, s.auxk_coef >= 0, ">= 0 (0 disables AuxK)"),
        ("sae.sparsity_coef", s.sparsity_coef, s.sparsity_coef >= 0, ">= 0"),
        ("sae.sparsity_warmup_steps", s.sparsity_warmup_steps, s.sparsity_warmup_steps >= 0, ">= 0"),
        ("sae.jumprelu_bandwidth", s.jumprelu_bandwidth, s.jumprelu_bandwidth > 0, "> 0"),
        ("sae.jumprelu_init_threshold", s.jumprelu_init_threshold, s.jumprelu_init_threshold >= 0, ">= 0"),
        ("sae.batchtopk_threshold_lr", s.batchtopk_threshold_lr, 0 < s.batchtopk_threshold_lr <= 1, "in (0, 1]"),
        ("sae.resample_every", s.resample_every, s.resample_every >= 0, ">= 0 (0 disables)"),
        ("eval.every", cfg.eval.every, cfg.eval.every >= 0, ">= 0 (0 disables)"),
        ("eval.n_rows", cfg.eval.n_rows, cfg.eval.n_rows >= 1, ">= 1"),
        ("eval.n_texts", cfg.eval.n_texts, cfg.eval.n_texts >= 1, ">= 1"),
    ]


def validate(cfg: TrainConfig, d_in: int | None = None, n_devices: int | None = None,
             n_rows: int | None = None) -> None:
    """Raise ConfigError for a configuration that cannot work (``d_in``, ``n_devices`` and
    ``n_rows``, the training rows, add the checks that need them)."""
    sae = cfg.sae
    for name, value, ok, allowed in _ranges(cfg):
        if not ok:
            raise ConfigError(f"{name}={value} is out of range: it must be {allowed} (--{name.replace('_', '-')})")
    if n_rows is not None and cfg.data.batch_size > n_rows:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the {n_rows} training rows "
                          "(after the held-out tail); lower --data.batch-size or use more data")
    if sae.d_sae <= 0:
        raise ConfigError(f"sae.d_sae must be positive, got {sae.d_sae}")
    if sae.architecture in ("topk", "batchtopk"):
        if not 0 < sae.k <= sae.d_sae:
            raise ConfigError(
                f"sae.k={sae.k} must be in [1, d_sae={sae.d_sae}]; lower --sae.k or raise --sae.d_sae"
            )
    if not 0 < sae.dead_tokens <= 2**30:
        raise ConfigError(f"sae.dead_tokens={sae.dead_tokens} must be in [1, 2**30] (the counters saturate at 2**30)")
    if cfg.eval.every and cfg.data.holdout_fraction == 0:
        raise ConfigError("eval.every needs held-out rows: data.holdout_fraction is 0; set --data.holdout-fraction "
                          "(e.g. 0.1) or drop --eval.every")
    if cfg.checkpoint.every <= 0 or cfg.log.every <= 0:
        raise ConfigError("checkpoint.every and log.every must be positive")
    if cfg.data.store and cfg.data.npy:
        raise ConfigError("give either --data.store or --data.npy, not both")
    if cfg.data.difference != "none" and not (cfg.data.store or cfg.data.npy):
        raise ConfigError(f"data.difference={cfg.data.difference!r} needs --data.store or --data.npy "
                          "(the 'before' side); synthetic shifts are --data.synthetic shifts")
    if (cfg.data.difference == "paired") != bool(cfg.data.second):
        raise ConfigError("--data.second (the 'after' source) goes with --data.difference paired, and "
                          "--data.difference paired needs it")
    if cfg.data.whiten_eps <= 0:
        raise ConfigError(f"data.whiten_eps must be > 0, got {cfg.data.whiten_eps}")
    if cfg.data.whiten and d_in is not None and cfg.data.n_stat_rows < 2 * d_in:
        raise ConfigError(f"data.n_stat_rows={cfg.data.n_stat_rows} rows cannot fit a {d_in}x{d_in} whitening "
                          f"(rank-deficient covariance); raise --data.n-stat-rows to at least {2 * d_in} "
                          f"(10x d_in, {10 * d_in}, is better)")
    for name, value, allowed in (("data.difference", cfg.data.difference, ("none", "paired", "sequential")),
                                 ("data.synthetic", cfg.data.synthetic, ("features", "shifts", "transcoder"))):
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of {allowed}")
    if sae.architecture == "ssae":
        _validate_ssae(cfg)
    _validate_issue15_architectures(cfg, d_in)
    if cfg.data.synthetic_skip < 0:
        raise ConfigError(f"data.synthetic_skip must be >= 0, got {cfg.data.synthetic_skip}")
    if not 0.0 <= cfg.data.holdout_fraction < 1.0:
        raise ConfigError(f"data.holdout_fraction must be in [0, 1), got {cfg.data.holdout_fraction}")
    if cfg.data.batch_size <= 0:
        raise ConfigError(f"data.batch_size must be positive, got {cfg.data.batch_size}")
    if cfg.mesh.dict <= 0:
        raise ConfigError(f"mesh.dict must be positive, got {cfg.mesh.dict}")
    if sae.d_sae % cfg.mesh.dict:
        raise ConfigError(
            f"sae.d_sae={sae.d_sae} is not divisible by mesh.dict={cfg.mesh.dict}; "
            "choose a d_sae that is a multiple of the dictionary axis"
        )
    if n_devices is not None:
        data, _ = cfg.mesh.shape(n_devices)
        if cfg.data.batch_size % data:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is not divisible by the data axis ({data})"
            )
    if d_in is not None and sae.architecture in ("topk", "batchtopk"):
        # the two-stage top-k takes k (and k_aux) candidates within each dictionary shard
        per_shard = sae.d_sae // cfg.mesh.dict
        k_aux = sae.k_aux or d_in // 2
        if sae.auxk_coef > 0 and k_aux > per_shard:
            raise ConfigError(f"sae.k_aux={k_aux} exceeds the {per_shard} latents per dictionary shard; "
                              "set --sae.k-aux smaller or lower --mesh.dict")
        if sae.k > per_shard:
            raise ConfigError(f"sae.k={sae.k} exceeds the {per_shard} latents per dictionary shard; "
                              "lower --sae.k or --mesh.dict")


def _validate_ssae(cfg: TrainConfig) -> None:
    """Combinations that would make the shift autoencoder train or export something else than asked."""
    sae, ssae, dual = cfg.sae, cfg.sae.ssae, cfg.dual
    if cfg.data.normalize != "none":
        raise ConfigError(f"data.normalize={cfg.data.normalize!r} with architecture 'ssae': the SSAE "
                          "normalises its own input (--sae.ssae.input-norm); pass --data.normalize none")
    if sae.resample_every:
        raise ConfigError("sae.resample_every is for penalised SAEs; the SSAE's sparsity is a constraint "
                          "(set --sae.resample-every 0)")
    if not sae.decoder_unit_norm:
        raise ConfigError("architecture 'ssae' needs --sae.decoder-unit-norm: with free decoder norms "
                          "Σ|h| <= level is met by shrinking h and growing W_dec")
    if sae.recon_loss != SAEConfig.recon_loss:
        raise ConfigError("sae.recon_loss does not apply to the SSAE; use --sae.ssae.loss-type relative|absolute")
    if ssae.code_norm == "layernorm" and ssae.export_as == "split":
        raise ConfigError("sae.ssae.code_norm='layernorm' exports as sae_jax's 'code_layernorm' architecture; "
                          "the SAELens 'split' export cannot hold a LayerNorm over the code: drop --sae.ssae.export-as split")
    if ssae.input_norm == "layernorm" and ssae.eps != SSAEConfig.eps:
        raise ConfigError(f"sae.ssae.eps={ssae.eps} with input_norm='layernorm': the export's layer_norm "
                          f"(SAELens semantics) uses eps={SSAEConfig.eps}; keep the default")
    if ssae.relu and ssae.export_as == "split":
        raise ConfigError("sae.ssae.export_as='split' is for signed codes; a ReLU code exports as 'standard' as is")
    if dual.optimizer not in ("sgd", "adam"):
        raise ConfigError(f"dual.optimizer={dual.optimizer!r} is not one of ('sgd', 'adam')")
    if dual.lr < 0 or dual.penalty_init <= 0 or dual.penalty_growth < 1:
        raise ConfigError("need dual.lr >= 0, dual.penalty_init > 0 and dual.penalty_growth >= 1")
    if dual.fixed_multiplier is None and dual.lr == 0:
        raise ConfigError("dual.lr=0 never moves the multiplier from 0, so the constraint is never enforced; "
                          "set --dual.lr > 0 (or --dual.fixed-multiplier for a fixed L1 penalty)")
    if dual.fixed_multiplier is not None:
        if dual.fixed_multiplier < 0:
            raise ConfigError(f"dual.fixed_multiplier must be >= 0, got {dual.fixed_multiplier}")
        if dual.formulation != "lagrangian":
            raise ConfigError("dual.fixed_multiplier is a fixed L1 penalty: it needs --dual.formulation lagrangian")


def _validate_issue15_architectures(cfg: TrainConfig, d_in: int | None) -> None:
    """Matryoshka, Gated and transcoder settings (and the data they need)."""
    sae, data = cfg.sae, cfg.data
    transcoder = sae.architecture in TRANSCODERS
    if sae.matryoshka_widths and sae.architecture != "matryoshka_batchtopk":
        raise ConfigError("sae.matryoshka_widths is for --sae.architecture matryoshka_batchtopk")
    if sae.d_out and not transcoder:
        raise ConfigError("sae.d_out is the target width of a transcoder; drop it for this architecture")
    crosscoder = sae.architecture == "crosscoder"
    if data.target and not (transcoder or crosscoder):
        raise ConfigError("--data.target makes [input | target] rows for --sae.architecture transcoder or "
                          "skip_transcoder ([base | tuned] rows for crosscoder)")
    if data.synthetic == "transcoder" and not transcoder:
        raise ConfigError("--data.synthetic transcoder makes [input | target] rows for --sae.architecture "
                          "transcoder or skip_transcoder")
    if crosscoder:
        if (data.store or data.npy) and not data.target or data.difference != "none" or data.synthetic == "shifts":
            raise ConfigError("the crosscoder reads [base | tuned] rows: --data.store/--data.npy (base) with "
                              "--data.target (tuned, aligned row by row), and no --data.difference")
        if data.whiten or data.normalize == "layernorm":
            raise ConfigError("the crosscoder takes --data.normalize none or expected_norm (one scale on both "
                              "models' rows) and no --data.whiten")
        if d_in is not None and d_in % 2:
            raise ConfigError(f"crosscoder rows of width {d_in} cannot be [base | tuned] halves")
    if sae.architecture == "matryoshka_batchtopk":
        if not 0 < sae.k <= sae.d_sae:
            raise ConfigError(f"sae.k={sae.k} must be in [1, d_sae={sae.d_sae}]")
        widths = sae.matryoshka_widths
        if any(w <= 0 or w > sae.d_sae for w in widths):
            raise ConfigError(f"sae.matryoshka_widths={widths} must lie in [1, d_sae={sae.d_sae}]")
        if any(a >= b for a, b in zip(widths, widths[1:])):
            raise ConfigError(f"sae.matryoshka_widths={widths} must be strictly increasing")
        if d_in is not None:
            per_shard = sae.d_sae // cfg.mesh.dict
            k_aux = sae.k_aux or d_in // 2
            if sae.auxk_coef > 0 and k_aux > per_shard:
                raise ConfigError(f"sae.k_aux={k_aux} exceeds the {per_shard} latents per dictionary shard; "
                                  "set --sae.k-aux smaller or lower --mesh.dict")
    if sae.architecture == "gated" and sae.resample_every:
        raise ConfigError("sae.resample_every does not reset the gated SAE's b_gate/b_mag/r_mag; set it to 0")
    if transcoder:
        if sae.d_out < 0:
            raise ConfigError(f"sae.d_out must be >= 0, got {sae.d_out}")
        if (data.store or data.npy) and not data.target or data.difference != "none":
            raise ConfigError(f"architecture {sae.architecture!r} needs [input | target] rows: --data.target with "
                              "--data.store/--data.npy, or --data.synthetic transcoder (and no --data.difference)")
        if data.target and not (data.store or data.npy):
            raise ConfigError("--data.target goes with --data.store or --data.npy (the input side)")
        if data.whiten or data.normalize == "layernorm":
            raise ConfigError("transcoders take --data.normalize none or expected_norm (one scale on input and "
                              "target, folded at export) and no --data.whiten")
        if sae.resample_every:
            raise ConfigError("sae.resample_every resamples toward the input reconstruction; transcoders set it to 0")
        if d_in is not None:
            d_out = sae.d_out or d_in // 2
            if sae.d_out == 0 and d_in % 2:
                raise ConfigError(f"rows of width {d_in} cannot split into equal input and target halves; "
                                  "set --sae.d-out")
            if not 0 < d_out < d_in:
                raise ConfigError(f"sae.d_out={d_out} leaves no input columns in rows of width {d_in}")


# L1 coefficients of the gated / transcoder presets (FVU loss, inputs at E||x|| = sqrt(d)), set on the
# presets' synthetic data only roughly: a starting point, sweep it on real activations (L1 is not scale-free).
GATED_L1 = 0.05
RELU_L1 = 5.0  # usual units (see the relu preset); papers' λ carry over when inputs are at E‖x‖ = √d
TRANSCODER_L1 = 0.02


def presets() -> dict[str, tuple[str, TrainConfig]]:
    """Named starting points for the CLI (override any field with --a.b value)."""
    tiny = TrainConfig(
        run_dir="runs/tiny", steps=600,
        data=DataConfig(batch_size=1024, synthetic_d_in=64, synthetic_n_features=256),
        sae=SAEConfig(d_sae=512, k=8, dead_tokens=200_000),
        optim=OptimConfig(lr=2e-3, warmup_steps=50),
        checkpoint=CheckpointConfig(every=200),
    )
    ssae = TrainConfig(
        run_dir="runs/ssae", steps=4000,
        data=DataConfig(batch_size=512, normalize="none", synthetic="shifts", synthetic_d_in=64,
                        synthetic_n_features=16, synthetic_k=3, synthetic_n_rows=65536),
        sae=SAEConfig(architecture="ssae", d_sae=16, ssae=SSAEConfig(target=0.8, warmup=400, schedule=1000)),
        optim=OptimConfig(lr=1e-3, warmup_steps=0),
        checkpoint=CheckpointConfig(every=1000),
    )
    transcoder = TrainConfig(
        run_dir="runs/transcoder",
        data=DataConfig(synthetic="transcoder"),
        sae=SAEConfig(architecture="transcoder", d_sae=16384, sparsity_coef=TRANSCODER_L1,
                      sparsity_warmup_steps=1000),
    )
    return {
        "tiny": ("TopK on the built-in synthetic ground-truth data (seconds on a CPU)", tiny),
        "topk": ("TopK SAE, k=32, 16k latents", TrainConfig(sae=SAEConfig(d_sae=16384, k=32))),
        "batchtopk": ("BatchTopK SAE, k=32, 16k latents",
                      TrainConfig(sae=SAEConfig(architecture="batchtopk", d_sae=16384, k=32))),
        # λ in the usual units (SAELens 'standard' l1_coefficient, Anthropic's April 2024 update): loss =
        # Σ_d (x − x̂)² per token on inputs at E‖x‖ = √d, + λ Σ_i |h_i| ‖W_dec,i‖ with free decoder norms.
        "relu": ("ReLU + L1 SAE, 16k latents, λ=5 in SAELens/Anthropic units (MSE on inputs at E‖x‖=√d)",
                 TrainConfig(sae=SAEConfig(architecture="relu", d_sae=16384, sparsity_coef=RELU_L1,
                                           sparsity_warmup_steps=1000, recon_loss="mse",
                                           decoder_unit_norm=False))),
        "jumprelu": ("JumpReLU SAE (L0 penalty), 16k latents",
                     TrainConfig(sae=SAEConfig(architecture="jumprelu", d_sae=16384, sparsity_coef=0.01,
                                               sparsity_warmup_steps=1000))),
        "ssae": ("sparse shift autoencoder (constrained sparsity) on activation differences; "
                 "default data: synthetic multi-concept shifts", ssae),
        "matryoshka_batchtopk": ("Matryoshka BatchTopK SAE, k=32, 16k latents, prefixes F/16, F/8, F/4, F/2, F",
                                 TrainConfig(sae=SAEConfig(architecture="matryoshka_batchtopk", d_sae=16384, k=32))),
        "gated": ("Gated SAE (L1 on the gate, frozen-decoder auxiliary loss), 16k latents",
                  TrainConfig(sae=SAEConfig(architecture="gated", d_sae=16384, sparsity_coef=GATED_L1,
                                            sparsity_warmup_steps=1000))),
        "crosscoder": ("BatchTopK crosscoder, k=32, 16k latents, on [base | tuned] rows (--data.store base, "
                       "--data.target tuned)",
                       TrainConfig(sae=SAEConfig(architecture="crosscoder", d_sae=16384, k=32))),
        "transcoder": ("transcoder (ReLU + L1) from --data.store/npy rows to aligned --data.target rows; "
                       "default data: synthetic pairs", transcoder),
        "skip_transcoder": ("skip-transcoder (transcoder + linear skip W_skip x); default data: synthetic pairs "
                            "with a dense linear part",
                            dataclasses.replace(transcoder, run_dir="runs/skip_transcoder",
                                                data=dataclasses.replace(transcoder.data, synthetic_skip=0.5),
                                                sae=dataclasses.replace(transcoder.sae,
                                                                        architecture="skip_transcoder"))),
    }
