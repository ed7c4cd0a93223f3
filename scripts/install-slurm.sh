#!/usr/bin/env bash
# Debian's Slurm and MUNGE, for the tests that start a real single-node Slurm
# (tests/slurm_cluster.py). Needs root; a no-op when they are already there.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    echo "[install-slurm] already installed: $(slurmctld -V)" >&2
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "[install-slurm] needs root (apt-get install slurm-wlm munge)" >&2
    exit 1
fi
SECONDS=0
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurm-wlm munge >/dev/null
# The packages' own services are not used: the tests start private daemons.
echo "[install-slurm] $(slurmctld -V) in ${SECONDS} s" >&2
