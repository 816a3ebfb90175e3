#!/usr/bin/env bash
# Stops the cluster started by launch/slurm/start-local-cluster.sh: cancels jobs, then stops the
# daemons by their recorded PIDs (the same SLURM_CI_DIR).
set -uo pipefail
D=${SLURM_CI_DIR:-/tmp/slurm-ci}
RUN=$D/run
export SLURM_CONF=$D/slurm.conf

# 1. cancel all jobs and wait (<= 30 s) until nothing is queued/running/completing
if [ -f "$RUN/slurmctld.pid" ] && kill -0 "$(cat "$RUN/slurmctld.pid")" 2>/dev/null; then
  scancel -u "$(id -un)" 2>/dev/null || true
  for _ in $(seq 150); do
    [ -z "$(squeue -h -t PD,R,CG,S,CF -o %A 2>/dev/null)" ] && break; sleep 0.2
  done
fi

# 2. stop daemons in reverse start order (SIGTERM, then SIGKILL after 20 s)
for name in slurmd slurmctld slurmdbd mariadb munged; do
  f=$RUN/$name.pid; [ -f "$f" ] || continue
  pid=$(cat "$f"); ts=$(date +%s.%N)
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { echo "stop-local-cluster: $name ($pid) ignored SIGTERM, killing"; kill -9 "$pid"; }
  fi
  [ -n "${SLURM_STOP_TIMING:-}" ] && echo "  $name stopped in $(echo "$(date +%s.%N) - $ts" | bc)s"
  rm -f "$f"
done
[ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ] && rm -f /etc/slurm/slurm.conf

# 3. report anything left (slurmstepd is re-parented to init, so check it explicitly)
# (munged is left out: a munged that was already running is shared, and this script did not start it)
left=$(ps -eo pid=,comm= | awk '$2 ~ /^(slurmctld|slurmd|slurmdbd|slurmstepd|mariadbd)$/')
if [ -n "$left" ]; then echo "stop-local-cluster: still running:"; echo "$left"; exit 1; fi
echo "stop-local-cluster: all stopped"
