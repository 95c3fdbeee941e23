#!/usr/bin/env bash
# A real single-node Slurm for the workflow test: Debian's slurm-wlm (22.05) and munge, run as root
# without systemd, with two fake GPUs (gres gpu:fakegpu backed by /dev/null and /dev/zero) so GPU
# requests are scheduled, two at a time, on a machine without one.
#
#   tests/slurm/cluster.sh start    install if missing, write /etc/slurm/{slurm,gres}.conf, start
#                                   munged, slurmctld and slurmd, wait until the node is idle
#   tests/slurm/cluster.sh stop     stop the three daemons by their pid files; slurm.conf is left
#                                   without a cluster, so Slurm clients fail fast
#   tests/slurm/cluster.sh status   sinfo
#
# Needs root and, the first time, apt access to Debian. Refuses to touch an /etc/slurm/slurm.conf it did
# not write. Prints the seconds the install took (SLURM_INSTALL_SECONDS=...).
set -euo pipefail

MARKER="# written by llm-pruning-zoo tests/slurm/cluster.sh"
CONF_DIR=/etc/slurm
RUN_DIR=/run/slurm-test
LOG_DIR=/var/log/slurm
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
MUNGE_PID=/run/munge/munged.pid

die() { echo "cluster.sh: $*" >&2; exit 1; }

install_packages() {
  local started=$SECONDS
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
      || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "apt-get not found: this script installs Debian's slurm-wlm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed (no network to the Debian mirror?)"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
      || die "apt-get install slurm-wlm munge failed"
  fi
  echo "SLURM_INSTALL_SECONDS=$((SECONDS - started))"
}

write_config() {
  local host cpus memory
  host=$(hostname -s)
  cpus=$(nproc)
  memory=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  mkdir -p "$CONF_DIR"
  if [ -f "$CONF_DIR/slurm.conf" ] && ! grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script; not touching a real cluster's config"
  fi
  cat > "$CONF_DIR/slurm.conf" <<EOF
$MARKER
ClusterName=pruningtest
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$memory Gres=gpu:fakegpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$CONF_DIR/gres.conf" <<EOF
$MARKER
NodeName=$host Name=gpu Type=fakegpu File=/dev/null
NodeName=$host Name=gpu Type=fakegpu File=/dev/zero
EOF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts slurmctld/slurmd as root)"
  install_packages
  write_config
  mkdir -p "$RUN_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  running "$MUNGE_PID" || runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge)"
  running "$CTLD_PID" || /usr/sbin/slurmctld -c || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
  running "$SLURMD_PID" || /usr/sbin/slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
  local state=""
  for _ in $(seq 1 60); do
    state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
    [ "$state" = idle ] && { sinfo; return 0; }
    sleep 1
  done
  tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
  die "node not idle after 60 s (state: ${state:-none})"
}

stop_pid() {
  local name=$1 file=$2 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { echo "cluster.sh: $name ($pid) ignored SIGTERM, killing" >&2; kill -9 "$pid"; }
  fi
  rm -f "$file"
}

stop() {
  stop_pid slurmd "$SLURMD_PID"
  stop_pid slurmctld "$CTLD_PID"
  stop_pid munged "$MUNGE_PID"
  # Leave a config without a cluster so that Slurm clients fail at once instead of waiting ~10 s for a
  # controller that is gone (the Snakemake Slurm plugin runs `scontrol show config` whenever it loads).
  if [ -f "$CONF_DIR/slurm.conf" ] && grep -qF "$MARKER" "$CONF_DIR/slurm.conf"; then
    printf '%s\n# stopped: no cluster configured (tests/slurm/cluster.sh start writes it again)\n' "$MARKER" \
      > "$CONF_DIR/slurm.conf"
    rm -f "$CONF_DIR/gres.conf"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) die "usage: $0 start|stop|status" ;;
esac
