#!/usr/bin/env bash
# Installs what launch/slurm/start-local-cluster.sh needs, when it is missing: Debian's
# slurm-wlm and munge (slurmctld, slurmd, munged), and slurmdbd with mariadb-server (so that
# sacct sees job states). start-local-cluster.sh calls this before it starts anything, so the
# README's test command sets up its own SLURM on a fresh Debian machine.
#
# Does nothing when every program is present. Installs with apt-get when run as root on a
# machine that has apt-get. Anywhere else it installs nothing and exits 1 with what to install
# and how to leave the SLURM tests out.
# Settings (environment):
#   SLURM_WITH_DBD   1 (default) = slurmdbd and MariaDB too; 0 = only slurm-wlm and munge
set -euo pipefail
WITH_DBD=${SLURM_WITH_DBD:-1}

programs="slurmctld slurmd munged"
packages="slurm-wlm munge"
if [ "$WITH_DBD" = 1 ]; then
  programs="$programs slurmdbd mariadbd"
  packages="$packages slurmdbd mariadb-server"
fi
find_missing() {
  missing=""
  for program in $programs; do
    [ -x "/usr/sbin/$program" ] || command -v "$program" >/dev/null || missing="$missing $program"
  done
}
find_missing
[ -z "$missing" ] && exit 0

how_to_skip='To run the tests without the SLURM ones: python -m pytest -n 2 -m "not slurm"'
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  why=$([ "$(id -u)" != 0 ] && echo "not running as root" || echo "apt-get not found (not Debian/Ubuntu)")
  cat >&2 <<EOF
install-packages: the test SLURM cluster needs${missing}, and they cannot be installed here ($why).
Install them as root, on Debian or Ubuntu:
  apt-get install -y slurm-wlm munge
  apt-get install -y --no-install-recommends slurmdbd mariadb-server
or with your distribution's packages for: $packages.
$how_to_skip
EOF
  exit 1
fi

# One install at a time on this machine (two test workers, two suites): dpkg takes one client.
exec 9>/tmp/mtl-bench-install-packages.lock
flock 9
find_missing  # another run may have installed them while this one waited
[ -z "$missing" ] && exit 0
echo "install-packages: installing$missing (Debian packages: $packages)" >&2
export DEBIAN_FRONTEND=noninteractive
install() {  # the package lists may be missing or stale on a fresh machine: update once, then retry
  apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}
started=$(date +%s)
if ! install slurm-wlm munge || { [ "$WITH_DBD" = 1 ] && ! install --no-install-recommends slurmdbd mariadb-server; }; then
  echo "install-packages: apt-get could not install $packages (see the output above). $how_to_skip" >&2
  exit 1
fi
echo "install-packages: installed in $(( $(date +%s) - started )) s" >&2
