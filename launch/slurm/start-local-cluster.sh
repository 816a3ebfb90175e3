#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for testing sweeps against a real
# scheduler (tests/test_slurm.py and .ci/run use it). slurmctld and slurmd on 127.0.0.1,
# proctrack/linuxproc, task/none, no cgroups; with MariaDB + slurmdbd so that sacct (and job
# states of cancelled jobs) work. Runs as root, without systemd. Needs Debian's slurm-wlm, munge,
# slurmdbd and mariadb-server, which install-packages.sh (called first) installs when missing.
# Settings (environment):
#   SLURM_CI_DIR    folder for conf, state, logs, pids (default /tmp/slurm-ci)
#   SLURM_WITH_DBD  1 = MariaDB + slurmdbd, so that sacct works (default 1); 0 = without
# Then: export SLURM_CONF=$SLURM_CI_DIR/slurm.conf (also linked from /etc/slurm/slurm.conf if free).
# Stop it with launch/slurm/stop-local-cluster.sh (same SLURM_CI_DIR).
set -euo pipefail
D=${SLURM_CI_DIR:-/tmp/slurm-ci}
WITH_DBD=${SLURM_WITH_DBD:-1}
NODE=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/^MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10 ))   # must be <= what slurmd detects
export SLURM_CONF=$D/slurm.conf
RUN=$D/run
t0=$(date +%s.%N)
# Installs the Debian packages when they are missing (as root; otherwise says what to install).
bash "$(dirname "$0")/install-packages.sh"
if [ "$(id -u)" != 0 ]; then echo "start-local-cluster: must run as root" >&2; exit 1; fi
for port in 6817 6818 6819; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "start-local-cluster: port $port is in use: is another SLURM cluster running? (stop it with stop-local-cluster.sh)" >&2
    exit 1
  fi
done
mkdir -p "$D" "$RUN" "$D/log"
rm -rf "$D/state" "$D/spool"; mkdir -p "$D/state" "$D/spool"   # fresh cluster every time

wait_for() {  # wait_for <seconds> <description> <command...>
  local n=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "start-local-cluster: timed out waiting for $what" >&2; return 1
}
start_bg() {  # start_bg <name> <command...>  (foreground daemon, backgrounded; records its PID)
  local name=$1; shift
  nohup "$@" >"$D/log/$name.out" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

# ---- munge -------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge; chown munge:munge /run/munge; chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  start_bg munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
  wait_for 10 munged sh -c 'munge -n | unmunge'
fi

# ---- slurm.conf ------------------------------------------------------------------------------
if [ "$WITH_DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat >"$SLURM_CONF" <<EOF
# Written by launch/slurm/start-local-cluster.sh: a single-node test cluster (no cgroups)
ClusterName=ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
KillWait=5
MinJobAge=300
SlurmctldPidFile=$D/state/slurmctld.pid
SlurmdPidFile=$D/state/slurmd.pid
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.txt
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
# let tools that do not inherit SLURM_CONF find it too
if [ -d /etc/slurm ] && { [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; }; then
  ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
fi

# ---- optional accounting: MariaDB + slurmdbd --------------------------------------------------
if [ "$WITH_DBD" = 1 ]; then
  DB=$D/mysql
  rm -rf "$DB"; mkdir -p "$DB"; chown mysql:mysql "$DB"   # fresh DB: job ids restart at 1 with the state dir
  if ! setpriv --reuid=mysql --regid=mysql --init-groups test -w "$DB"; then
    echo "start-local-cluster: user mysql cannot write $DB: SLURM_CI_DIR and its parents must be searchable by others (chmod o+x)" >&2
    exit 1
  fi
  mariadb-install-db --user=mysql --datadir="$DB" --auth-root-authentication-method=socket \
    --skip-test-db >"$D/log/mariadb-install.log" 2>&1 \
    || { echo "start-local-cluster: mariadb-install-db failed; see $D/log/mariadb-install.log" >&2; tail -5 "$D/log/mariadb-install.log" >&2; exit 1; }
  start_bg mariadb setpriv --reuid=mysql --regid=mysql --init-groups /usr/sbin/mariadbd --no-defaults \
    --datadir="$DB" --socket="$DB/mysqld.sock" --port=3307 --bind-address=127.0.0.1 \
    --pid-file="$DB/mysqld.pid" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
  wait_for 60 mariadb mariadb-admin --socket="$DB/mysqld.sock" ping
  mariadb --socket="$DB/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  # slurmdbd.conf is looked up next to \$SLURM_CONF
  cat >"$D/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$D/state/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$D/slurmdbd.conf"
  start_bg slurmdbd /usr/sbin/slurmdbd -D
  wait_for 60 slurmdbd sacctmgr -n show cluster
fi

# ---- slurmctld + slurmd ------------------------------------------------------------------------
start_bg slurmctld /usr/sbin/slurmctld -D
start_bg slurmd /usr/sbin/slurmd -D
node_idle() { sinfo -h -n "$NODE" -o %T | grep -qE '^(idle|mixed|allocated)$'; }
if ! wait_for 30 "node $NODE idle" node_idle; then
  sinfo -R; tail -20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2; exit 1
fi
sinfo
echo "start-local-cluster: cluster up in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")s (dbd=$WITH_DBD); export SLURM_CONF=$SLURM_CONF"
