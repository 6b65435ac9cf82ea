#!/usr/bin/env bash
# Trains on one machine's GPUs (1..N): one process sees every visible GPU and the trainer's
# data-parallel mesh spans them all (train.num_devices=-1), so nothing else is needed here.
#
#   launch/run_local.sh configs/vae.py:quickstart runs/vae_quickstart
#   CUDA_VISIBLE_DEVICES=0,1 launch/run_local.sh configs/vae.py:quickstart runs/vae2 \
#       --config.train.batch_size=128
#
# CUDA_VISIBLE_DEVICES, if set, picks the GPUs; train.batch_size is global and must divide
# evenly over them. Rerunning with the same WORKDIR resumes from its latest checkpoint.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.x.y=V ...]" >&2
  echo "  e.g. $0 configs/vae.py:quickstart runs/vae_quickstart" >&2
  exit 2
fi

echo "GPUs: ${CUDA_VISIBLE_DEVICES:-all visible}" >&2
exec ham-synth train --config="$1" --workdir="$2" "${@:3}"
