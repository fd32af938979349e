"""sae_jax: sparse autoencoders on language-model activations, in JAX.

Python API: ``train(config)`` trains (or resumes) a run, ``load(path)`` reads an exported
SAE (SAELens format) with ``encode``/``decode``, ``export(...)`` writes one.
"""
from sae_jax.config import TrainConfig
from sae_jax.export import LoadedSAE, export_state as export, load_sae as load

__version__ = "0.1.0"


def train(config: TrainConfig, source=None):
    """Train or resume the run ``config`` describes, on ``source`` (e.g. an in-memory
    ``sae_jax.data.source.ArraySource``) if given (see ``sae_jax.trainer.train``)."""
    from sae_jax.trainer import train as _train

    return _train(config, source)


__all__ = ["LoadedSAE", "TrainConfig", "export", "load", "train", "__version__"]
