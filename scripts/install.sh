#!/usr/bin/env bash
# Install byzer-magic, JupyterLab (its [lab] extra) and what its tests need into .venv (idempotent;
# fast when already done): the test extra includes the lab extra.
# On a machine without a GPU, torch is pinned to the CPU build (constraints-cpu.txt) so that pip does
# not fetch a multi-GB CUDA build; on a GPU machine set BYZER_TORCH_CONSTRAINTS="" to keep yours.
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=${BYZER_TORCH_CONSTRAINTS-constraints-cpu.txt}
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.byzer-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [ -n "$constraints" ]; then
    .venv/bin/python -m pip install -q -c "$constraints" torch
    .venv/bin/python -m pip install -q -c "$constraints" -e '.[test]'
  else
    .venv/bin/python -m pip install -q -e '.[test]'
  fi
  # jsonschema's optional IRI check, rfc3987-syntax (jupyter-events asks for it through jsonschema's
  # format-nongpl extra), builds Earley parsers when it is imported, and Ray imports jsonschema in every
  # process it starts: ~3-4 s of CPU each (the head 37 -> 16 s, an empty Ray Train run 44 -> 27 s here,
  # docs/BENCHMARKS.md). Nothing here checks IRIs; without it jsonschema skips that one format.
  .venv/bin/python -m pip uninstall -q -y rfc3987-syntax
  touch "$stamp"
fi
