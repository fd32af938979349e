"""SAELens's own SAETrainer.fit() with a TopK training SAE on fixed activations (own venv).

variant 'default': SAELens defaults; 'sparse': use_sparse_activations=True with the
decoder-norm rescale off (SAELens's sparse path raises on CPU otherwise).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from _timing import StepClock, load_batches, report, worker_args  # noqa: E402


def main() -> None:
    args = worker_args(__doc__)
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    data = torch.from_numpy(load_batches(args))
    extra = {}
    if args.variant == "sparse":
        extra = dict(use_sparse_activations=True, rescale_acts_by_decoder_norm=False)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=data.shape[1], d_sae=args.n_latents, k=args.k, dtype="float32", device="cpu", **extra))
    n_steps = args.warmup + args.steps
    lr = 2e-4 / (args.n_latents / 2**14) ** 0.5
    cfg = SAETrainerConfig(total_training_samples=n_steps * args.batch,
                           train_batch_size_samples=args.batch, lr=lr, lr_end=lr, device="cpu")
    batches = iter(data.split(args.batch))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
    clock = StepClock()
    losses: list[float] = []
    inner = trainer.step

    def timed_step(batch):
        out = inner(batch)
        clock.tick()
        losses.append(float(out.loss))
        return out

    trainer.step = timed_step
    clock.marks = [__import__("time").perf_counter()]
    trainer.fit()
    report(args, "saelens", clock.durations(), losses)


if __name__ == "__main__":
    main()
