"""EleutherAI sparsify's own Trainer.fit() on fixed activations (run in its own venv).

sparsify trains inside a forward hook of a transformers model; a one-layer model whose
layer returns the activation rows named by input_ids feeds it our data unchanged.
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PretrainedConfig, PreTrainedModel  # noqa: E402

from _timing import StepClock, load_batches, report, worker_args  # noqa: E402

SEQ = 256  # tokens per "sequence"; batch_size in sequences = batch // SEQ


class RowsConfig(PretrainedConfig):
    model_type = "sae_jax_rows"

    def __init__(self, hidden_size: int = 8, num_hidden_layers: int = 1, **kw):
        super().__init__(**kw)
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers


class Rows(torch.nn.Module):
    def __init__(self, acts: torch.Tensor):
        super().__init__()
        self.register_buffer("acts", acts, persistent=False)

    def forward(self, input_ids):
        return self.acts[input_ids]


class RowsModel(PreTrainedModel):
    config_class = RowsConfig

    def __init__(self, config: RowsConfig, acts: torch.Tensor):
        super().__init__(config)
        self.layers = torch.nn.ModuleList([Rows(acts)])
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids=None, **kw):
        return (self.layers[0](input_ids),)


def main() -> None:
    args = worker_args(__doc__)
    from sparsify import SaeConfig, Trainer, TrainConfig

    acts = torch.from_numpy(load_batches(args))
    if args.batch % SEQ:
        raise SystemExit(f"--batch must be a multiple of {SEQ} for the sparsify worker")
    ids = torch.arange(acts.shape[0]).reshape(-1, SEQ)
    ds = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    model = RowsModel(RowsConfig(hidden_size=acts.shape[1]), acts)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            SaeConfig(k=args.k, num_latents=args.n_latents),
            batch_size=args.batch // SEQ,
            optimizer="adam" if args.variant == "default" else args.variant,
            loss_fn="fvu",
            hookpoints=["layers.0"],
            log_to_wandb=False,
            save_every=10**9,
            save_dir=tmp,
            lr_warmup_steps=100,
        )
        trainer = Trainer(cfg, ds, model)
        clock = StepClock()
        for opt in trainer.optimizers:
            inner = opt.step

            def timed_step(*a, _inner=inner, **kw):
                out = _inner(*a, **kw)
                clock.tick()
                return out

            opt.step = timed_step
        clock.marks = [__import__("time").perf_counter()]
        trainer.fit()
    report(args, "sparsify", clock.durations(), [])


if __name__ == "__main__":
    main()
