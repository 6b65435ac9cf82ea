#!/usr/bin/env bash
# Packs what tools/gpu_check.sh needs on a lent GPU machine that cannot reach the internet into
# .gpu/ (git-ignored; ~32 MB, under the device tool's 64 MiB): wheels of the Python packages its
# image lacks (for Python 3.12, x86-64; the image has jax, flax, optax, orbax, torch, timm) and
# DermaMNIST at 28². Run it here, then on the GPU (the device tool: carry [".gpu"]):
#   tools/gpu_check.sh --out=$OUT --wheels=.gpu/wheels --data=.gpu/dermamnist_dev.npz
set -euo pipefail
cd "$(dirname "$0")/.."
npz="${1:-../shared/data/dermamnist_dev/dermamnist_dev.npz}"
rm -rf .gpu/wheels  # One version of each: two stop the whole install there.
mkdir -p .gpu/wheels
# What the image lacks of ham_synth's and the benchmark's needs, with their own needs, and
# protobuf (tensorflow-metadata's generated code needs a recent one; the image's is unknown).
missing=(grain tensorflow-datasets ml-collections tensorboardX diffusers pytorch-fid
         array-record dm-tree immutabledict simple-parsing docstring-parser tensorflow-metadata
         googleapis-common-protos termcolor toml portpicker protobuf)
# Each at the version installed here, where the tests pass with it (unpinned if absent here).
mapfile -t pinned < <(python3 - "${missing[@]}" <<'PY'
import importlib.metadata, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(name)
PY
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .gpu/wheels "${pinned[@]}"
python3 -m pip wheel -q --no-deps -w .gpu/wheels promise  # An sdist only: built here, pure Python.
cp "$npz" .gpu/dermamnist_dev.npz
du -sh .gpu
