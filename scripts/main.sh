#!/usr/bin/env bash
# The main job: install, then run notebooks/quickstart.ipynb headless in a real kernel — a real tiny
# continued pretraining through the %%byzerllm magics on the embedded local Ray head (CPU, gloo).
# The executed notebook is saved to build/quickstart.ipynb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p build
.venv/bin/python scripts/run_notebook.py notebooks/quickstart.ipynb build/quickstart.ipynb
