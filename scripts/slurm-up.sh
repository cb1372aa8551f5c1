#!/usr/bin/env bash
# Install (if missing) and start a single-node SLURM cluster on this Debian machine, as root.
#
# Daemons are started by hand (no systemd): munged, mariadbd, slurmdbd, slurmctld, slurmd.
# Accounting (slurmdbd) is on because submitit reads job states with `sacct`: without it a
# cancelled job is never seen as finished.  The node advertises 2 GPUs as GRES (no devices
# behind them) so that multi-GPU submissions (--gpus-per-node, one task per GPU) can be
# tested on a CPU machine.  Idempotent: when its node already answers, exit 0 at once.
# Settings are the ones measured to work in containers (see the comments in slurm.conf).
#
# It only ever runs a cluster of its own: the configuration it writes ($SLURM_CONF, default
# /etc/slurm/slurm.conf, with gres.conf and slurmdbd.conf beside it) starts with MARK and names
# ClusterName=repro. On a machine with a SLURM configuration it did not write (a site's, or
# a configless node whose controller answers sinfo) it refuses in one line, before writing or
# installing anything. `slurm-up.sh --check` (no root) prints whose SLURM this machine has:
# "ours CONF", "none" or "foreign WHAT" (what the tests' conftest.py reads).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
CLUSTER=repro
MARK="# Written by scripts/slurm-up.sh"   # the first line of every file it writes
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
ETC=$(dirname "$CONF")
HOST=$(hostname -s)
RUN=/run/slurm
LOG=/var/log/slurm
LIB=/var/lib/slurm
DB_PASS=repro-slurmdbd   # local-only MariaDB account of slurmdbd (socket on 127.0.0.1)
GPUS=${SLURM_UP_GPUS:-2}
WAIT_S=${SLURM_UP_WAIT_S:-90}

say() { echo "slurm-up: $*"; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }

node_ready() { timeout 5 sinfo -h -N -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)$'; }

alive() {  # alive PIDFILE: the daemon of that pid file runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT CMD...
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up within ${secs}s"
}

ours() {  # ours FILE: FILE was written by this script (its first line starts with MARK)
  case "$(head -n 1 "$1" 2>/dev/null)" in "$MARK"*) return 0 ;; esac; return 1
}

whose() {  # one line: "ours CONF", "none" or "foreign WHAT"
  local name
  if [ -e "$CONF" ]; then
    name=$(sed -n 's/^[[:space:]]*ClusterName[[:space:]]*=[[:space:]]*\([^[:space:]#]*\).*/\1/Ip' "$CONF" | head -n 1)
    if ! ours "$CONF" || [ "$name" != "$CLUSTER" ]; then
      echo "foreign $CONF (ClusterName=${name:-unset})"; return
    fi
    if [ -r "$ETC/slurmdbd.conf" ] && ! ours "$ETC/slurmdbd.conf"; then  # (mode 600: root reads it)
      echo "foreign $ETC/slurmdbd.conf"; return
    fi
    echo "ours $CONF"; return
  fi
  # no configuration file: a configless node (DNS SRV, slurmd --conf-server) may still answer
  if command -v sinfo >/dev/null && timeout 5 sinfo -h -o %P >/dev/null 2>&1; then
    echo "foreign configless cluster (sinfo answers; no $CONF)"; return
  fi
  echo none
}

[ "${1:-}" = --packages ] && { echo "${PACKAGES[*]}"; exit 0; }   # for .ci/run's clean start
[ "${1:-}" = --check ] && { whose; exit 0; }
site=$(whose)
case "$site" in
  foreign*) echo "slurm-up: refused: this machine has a SLURM configuration not written by slurm-up.sh (${site#foreign }); it is never touched (the tests skip their SLURM part there: docs/install.md says how to run them on it)" >&2
            exit 2 ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts system daemons)"
# One caller at a time (two test workers, or a user's script beside them): the second waits
# for the first, then finds the node up below.
exec 9>/run/slurm-up.lock
flock -w $((WAIT_S + 600)) 9 || die "another slurm-up.sh held /run/slurm-up.lock too long"
if [ "${site%% *}" = ours ] && command -v sinfo >/dev/null && node_ready; then
  say "already running ($(sinfo -h -N -o '%N %T' | head -1))"
  exit 0
fi

# --- packages ---------------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get -o Acquire::Retries=3 -o DPkg::Lock::Timeout=300 update -qq
  # policy-rc.d 101: do not let the packages try to start services (there is no init system)
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3 -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

mkdir -p "$RUN" "$LOG" "$LIB/slurmctld" "$LIB/slurmd" /run/munge /run/mysqld /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chown mysql:mysql /run/mysqld

# --- munge ------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged
fi
wait_for 10 munged munge -n

# --- MariaDB (slurmdbd's store) ---------------------------------------------------------
if [ ! -d /var/lib/mysql/mysql ]; then
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
fi
if ! alive /run/mysqld/mysqld.pid; then
  setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 --skip-networking=0 \
    >>"$LOG/mariadb.log" 2>&1 < /dev/null &
fi
wait_for 30 mariadbd mariadb-admin --socket=/run/mysqld/mysqld.sock ping
mariadb --socket=/run/mysqld/mysqld.sock -e "
  CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# --- configuration ----------------------------------------------------------------------
read -r CPUS MEM < <(slurmd -C | awk '/^NodeName/ {for (i=1;i<=NF;i++) {split($i,kv,"="); v[kv[1]]=kv[2]}; print v["CPUs"], v["RealMemory"]}')
MEM=$((MEM * 95 / 100))   # leave a little to the OS, or slurmd drains the node as "low RealMemory"
mkdir -p "$ETC"
cat > "$CONF" <<EOF
$MARK: a single-node cluster for tests and the CPU demo.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# short credential lifetime: a requeued job may restart ~10 s after it ended
AuthInfo=cred_expire=10
# no cgroups in containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job with no memory request takes the whole node (one job at a time)
DefMemPerCPU=1024
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
StateSaveLocation=$LIB/slurmctld
SlurmdSpoolDir=$LIB/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=10
MinJobAge=300
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
# GPUs backed by harmless device files (slurmd counts one GPU per File= line): enough for
# the scheduler to place --gpus-per-node jobs on a CPU machine.
GPU_FILES=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty)
((GPUS <= ${#GPU_FILES[@]})) || die "SLURM_UP_GPUS must be <= ${#GPU_FILES[@]}"
echo "$MARK" > "$ETC/gres.conf"
for ((i = 0; i < GPUS; i++)); do echo "NodeName=$HOST Name=gpu File=${GPU_FILES[$i]}" >> "$ETC/gres.conf"; done
cat > "$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
chmod 600 "$ETC/slurmdbd.conf"

# --- SLURM daemons (each forks into the background and writes its pid file) --------------
alive "$RUN/slurmdbd.pid" || slurmdbd
wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
alive "$RUN/slurmctld.pid" || slurmctld
wait_for 30 slurmctld scontrol ping
alive "$RUN/slurmd.pid" || slurmd
for _ in $(seq $((WAIT_S * 5))); do
  node_ready && break
  # a node that was down when slurmctld last ran comes back as down: resume it
  state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
  case "$state" in inval*) die "node $HOST is INVAL: $(sinfo -h -N -o %E | head -1)" ;; esac
  case "$state" in down*|drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;; esac
  sleep 0.2
done
node_ready || die "node $HOST not idle after ${WAIT_S}s (see $LOG/slurmd.log, $LOG/slurmctld.log)"
say "up: $(sinfo -h -N -o '%N %T cpus=%c mem=%m gres=%G' | head -1)"
