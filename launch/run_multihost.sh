#!/usr/bin/env bash
# Trains across several machines, one process per host; each process drives that host's GPUs
# and the trainer's mesh spans every host's. Run this on every host with the same arguments and:
#   COORDINATOR  host:port of process 0 (HOST_ID=0), reachable from every host
#   NUM_HOSTS    number of hosts (processes) in the job
#   HOST_ID      this host's index, 0..NUM_HOSTS-1
# ham_synth/main.py reads the JAX_* variables exported below and calls jax.distributed.initialize.
#
# Every host must see the same WORKDIR (a shared filesystem): checkpoints are written to it
# collectively and all hosts resume from it. train.batch_size is global, over all hosts' GPUs.
#
# Example, 2 hosts (node0 is process 0):
#   node0$ COORDINATOR=node0:12355 NUM_HOSTS=2 HOST_ID=0 \
#            launch/run_multihost.sh configs/vae.py:quickstart /shared/runs/vae
#   node1$ COORDINATOR=node0:12355 NUM_HOSTS=2 HOST_ID=1 \
#            launch/run_multihost.sh configs/vae.py:quickstart /shared/runs/vae
set -euo pipefail

usage() {
  echo "usage: COORDINATOR=HOST:PORT NUM_HOSTS=N HOST_ID=I $0 CONFIG WORKDIR [--config.x.y=V ...]" >&2
  echo "  run on every host; HOST_ID=0 is the host named in COORDINATOR" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
[[ -n "${COORDINATOR:-}" && -n "${NUM_HOSTS:-}" && -n "${HOST_ID:-}" ]] || usage
if ! [[ "$NUM_HOSTS" =~ ^[0-9]+$ && "$HOST_ID" =~ ^[0-9]+$ ]] || ((HOST_ID >= NUM_HOSTS)); then
  echo "NUM_HOSTS=$NUM_HOSTS and HOST_ID=$HOST_ID must be integers with 0 <= HOST_ID < NUM_HOSTS" >&2
  exit 2
fi

export JAX_COORDINATOR_ADDRESS="$COORDINATOR"
export JAX_NUM_PROCESSES="$NUM_HOSTS"
export JAX_PROCESS_ID="$HOST_ID"
echo "Host $HOST_ID of $NUM_HOSTS, coordinator $COORDINATOR" >&2
exec ham-synth train --config="$1" --workdir="$2" "${@:3}"
