"""``sae-jax`` command line: thin wrappers that parse a typed config and call the library."""
from __future__ import annotations

import dataclasses
import errno
import importlib
import os
import sys
from typing import Callable, Sequence

import tyro

USAGE = """usage: sae-jax COMMAND [options]

commands:
  train PRESET [--a.b value ...]   train (or resume) an SAE; presets: {presets}
  ssae [--a.b value ...]           the same as `train ssae`: a sparse shift autoencoder (constrained sparsity)
  sweep PRESET --members FILE [--no-stack] [--a.b value ...]
                                   train many SAEs on one pass over the data: FILE is a JSON/YAML list of
                                   per-member overrides of the preset, e.g. [{{"sae.k": 16}}, {{"sae.k": 32}}]
  export --run-dir DIR [--out DIR] re-export a run's latest checkpoint in SAELens format
{extra}
`sae-jax COMMAND --help` lists every option with its documentation. Errors print one line;
add --debug (or set SAE_JAX_DEBUG=1) for the traceback.
"""

# Commands of other subsystems, imported only when used: name -> (module, config, run function, help).
_COMMANDS = {
    "extract": ("sae_jax.lm.extract", "ExtractConfig", "run_extract",
                "extract LM activations into an activation store"),
    "verify": ("sae_jax.data.verify", "VerifyConfig", "run_verify",
               "check every shard of an activation store against the digests recorded at extraction"),
    "eval": ("sae_jax.evals.run", "EvalConfig", "run_eval", "evaluate an exported SAE, write eval.json + report.html"),
    "bench": ("sae_jax.bench.run", "BenchConfig", "run_bench", "benchmark the train step's throughput"),
    "plan": ("sae_jax.bench.plan", "PlanConfig", "run_plan",
             "dry-run memory planner: compile the train step for a mesh too large for this machine"),
    "tune": ("sae_jax.lm.tune", "TuneConfig", "run_tune",
             "splice an SAE into its model and fine-tune c,d (vs one MLP, full) on a labelled text slice"),
    "finetune": ("sae_jax.lm.finetune", "FinetuneConfig", "run_finetune",
                 "fine-tune a base LM on labelled topic(s) (a planted change), save an HF folder for extract --chat-model"),
    "demo": ("sae_jax.demo", "DemoConfig", "run_demo", "the README main job: extract -> train -> eval"),
}


def print_summary(metrics: dict[str, float], export_dir) -> None:
    """The headline numbers of a finished training run."""
    if not metrics:
        return
    print(f"\nfinal batch: FVU {metrics['fvu']:.4f}  L0 {metrics['l0']:.1f}  "
          f"dead {100 * metrics['dead_frac']:.2f}%  loss {metrics['loss']:.4f}")
    if "multiplier" in metrics:  # constrained training
        print(f"constraint: Σ|h|/(B·F) {metrics['mean_abs_h']:.4f} at level {metrics['level']:.4f}  "
              f"multiplier {metrics['multiplier']:.4f}")
    if export_dir is not None:
        print(f"exported SAE (SAELens format): {export_dir}")


def _train(args: Sequence[str]) -> None:
    from sae_jax.config import presets
    from sae_jax.trainer import train

    table = presets()
    if not args or args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args = ["topk", *args]
    cfg = tyro.extras.overridable_config_cli(table, args=list(args), prog="sae-jax train")
    result = train(cfg)
    print_summary(result.metrics, result.export_dir)


def _sweep(args: Sequence[str]) -> None:
    """`sae-jax sweep PRESET --members FILE [--a.b value ...]`: the options set the base config shared
    by every member (and their data stream); FILE lists each member's overrides."""
    from sae_jax.config import ConfigError, presets
    from sae_jax.sweep import load_members, member_configs, train_sweep

    table = presets()
    args = list(args)
    if "--members" not in args:
        if any(a in ("-h", "--help") for a in args):
            print("usage: sae-jax sweep PRESET --members FILE [--a.b value ...]  (FILE: a JSON/YAML list of "
                  'member overrides such as [{"sae.k": 16, "run_dir": "runs/k16"}, {"sae.k": 32}]; '
                  "options as for `sae-jax train`)")
            return
        raise ConfigError("sae-jax sweep needs --members FILE: a JSON (or YAML) list of member overrides, "
                          'e.g. [{"sae.k": 16}, {"sae.k": 32, "seed": 1}]')
    i = args.index("--members")
    if i + 1 >= len(args):
        raise ConfigError("--members needs a file path")
    path = args[i + 1]
    del args[i:i + 2]
    stack = "--no-stack" not in args  # step every member in turn (no vmap)
    args = [a for a in args if a != "--no-stack"]
    if not args or args[0].startswith("-"):
        args = ["topk", *args]
    base = tyro.extras.overridable_config_cli(table, args=args, prog="sae-jax sweep")
    for result in train_sweep(member_configs(base, load_members(path)), stack=stack):
        print(f"\n{result.run_dir}:", end="")
        print_summary(result.metrics, result.export_dir)


@dataclasses.dataclass(frozen=True)
class ExportArgs:
    run_dir: str
    """Run directory holding config.json and checkpoints/."""
    out: str = ""
    """Output folder (default: RUN_DIR/export)."""
    unit_norm_decoder: bool = False
    """Unit-norm decoder rows (SAEBench-ready), their norms moved into the encoder and codes: same
    reconstructions, codes scaled per latent (ReLU, JumpReLU, TopK)."""


def _export(args: Sequence[str]) -> None:
    from sae_jax.reexport import export_run

    a = tyro.cli(ExportArgs, args=list(args), prog="sae-jax export")
    print(export_run(a.run_dir, a.out or None, unit_norm=a.unit_norm_decoder))


def _lazy(name: str, spec) -> Callable[[Sequence[str]], None]:
    module_name, cfg_name, fn_name, _ = spec

    def run(args: Sequence[str]) -> None:
        module = importlib.import_module(module_name)
        cfg = tyro.cli(getattr(module, cfg_name), args=list(args), prog=f"sae-jax {name}")
        getattr(module, fn_name)(cfg)

    return run


def _one_line(err: BaseException) -> tuple[str, int]:
    """(message, exit code) for an error that ends a command."""
    from sae_jax.errors import SaeJaxError

    if isinstance(err, SaeJaxError):
        return str(err), err.exit_code
    if isinstance(err, OSError) and err.errno in _OS_HINTS:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where} ({_OS_HINTS[err.errno]})", 1
    if isinstance(err, (FileNotFoundError, ValueError, OSError)):  # the library's messages name path and fix
        return str(err), 1
    return f"{type(err).__name__}: {err} (unexpected: rerun with --debug for the traceback and report it)", 1


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write to another folder",
    errno.EACCES: "permission denied: check the folder's permissions or choose another one",
    errno.EPERM: "operation not permitted: check the folder's permissions or choose another one",
    errno.EROFS: "read-only file system: choose a writable folder",
    errno.EDQUOT: "disk quota exceeded: free space or write to another folder",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command. Errors end it with one line on stderr (exit 2: usage, 1: failure, 130/143:
    interrupted after saving); ``--debug`` or ``SAE_JAX_DEBUG=1`` shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SAE_JAX_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        _dispatch(argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:  # outside a training loop (which saves and raises Interrupted)
        if debug:
            raise
        print("sae-jax: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if debug:
            raise
        from sae_jax.errors import Interrupted

        message, code = _one_line(err)
        kind = "" if isinstance(err, Interrupted) else "error: "  # saved and resumable: not a failure
        print(f"sae-jax: {kind}{' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(code) from None


def _dispatch(argv: list[str]) -> None:
    from sae_jax.config import presets

    commands: dict[str, Callable] = {"train": _train, "export": _export, "sweep": _sweep,
                                     "ssae": lambda args: _train(["ssae", *args])}
    commands |= {name: _lazy(name, spec) for name, spec in _COMMANDS.items()}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        extra = "".join(f"  {name:<33}{spec[3]}\n" for name, spec in _COMMANDS.items())
        print(USAGE.format(presets=", ".join(presets()), extra=extra))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown command {argv[0]!r}")
            raise SystemExit(2)
        return
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
