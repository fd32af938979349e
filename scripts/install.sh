#!/usr/bin/env bash
# Install sae_jax with its torch side and test tools into the active Python environment.
# torch is pinned to the CPU build first so the `lm` extra does not pull a multi-GB CUDA build;
# on a GPU machine install the torch build you want before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[lm,dev]"
