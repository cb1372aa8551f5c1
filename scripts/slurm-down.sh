#!/usr/bin/env bash
# Stop the single-node cluster started by scripts/slurm-up.sh: each daemon by its pid file
# (slurmd, slurmctld, slurmdbd, mariadbd, munged, in that order), waiting until it exits.
# Refuses (one line, exit 2) where the machine's SLURM configuration is not slurm-up.sh's.
set -euo pipefail

stop() {  # stop NAME PIDFILE
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm-down: $name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
    echo "slurm-down: stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

site=$("$(dirname "$0")/slurm-up.sh" --check)   # a site's daemons may use the same pid files
case "$site" in
  foreign*) echo "slurm-down: refused: this machine's SLURM (${site#foreign }) was not started by slurm-up.sh" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "slurm-down: error: must run as root" >&2; exit 1; }
stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
stop slurmdbd /run/slurm/slurmdbd.pid
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
