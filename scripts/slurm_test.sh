#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on localhost, for tests/test_slurm.py (which
# runs README's sbatch script on it). Everything it starts carries
# NEUROVFM_SLURM_TEST_DIR=DIR in its environment; `stop` ends exactly those processes.
#
#   scripts/slurm_test.sh install           apt-get install slurm-wlm munge (root, Debian/Ubuntu; .ci/run
#                                           runs it). Quick when they are installed; never fails: without
#                                           them tests/test_slurm.py skips and says why
#   scripts/slurm_test.sh start DIR [PID]   munged, slurmctld and slurmd on 127.0.0.1 (free ports), their
#                                           config (slurm.conf, cgroup.conf), state and logs in DIR (absolute,
#                                           new or empty); returns when the node is idle and prints
#                                           SLURM_CONF=..., SLURM_BIN=... (the folder of sbatch) and
#                                           SLURM_VERSION=... With PID, a watchdog runs `stop DIR` when process
#                                           PID ends. Exit 77: this machine cannot run SLURM (why: on stderr,
#                                           with the daemons' last log lines)
#   scripts/slurm_test.sh stop DIR          cancel the jobs, stop the daemons (SIGTERM), then end (by pid) every
#                                           process left that carries the marker; exit 1 if any survives
#   scripts/slurm_test.sh test [ARGS]       python -m pytest tests/test_slurm.py ARGS ($PYTHON, default python3)
#
# Plugins: proctrack/linuxproc, task/none, no accounting; Slurm 22.05 still reads a
# cgroup.conf (CgroupPlugin=cgroup/v1, IgnoreSystemd=yes). munged runs with --force
# (its socket folder lies under a private temporary folder). Every wait has a timeout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# the daemons live in sbin; the test suite may run with a PATH that holds neither
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
unset NEUROVFM_SLURM_TEST_DIR  # children of this script never carry the marker
tools=(munged munge slurmctld slurmd sbatch scontrol scancel squeue sinfo)
SKIP=77

die_skip() {
  printf 'slurm_test.sh: cannot run SLURM here: %s\n' "$*" >&2
  exit $SKIP
}

missing_tools() {
  local t out=()
  for t in "${tools[@]}"; do command -v "$t" >/dev/null 2>&1 || out+=("$t"); done
  echo "${out[*]}"
}

# --- install -----------------------------------------------------------------------------
cmd_install() {
  local missing
  missing=$(missing_tools)
  if [ -z "$missing" ]; then
    echo "slurm_test.sh: slurm-wlm and munge are installed ($(slurmd -V 2>&1 | head -n 1), $(munged -V 2>&1 | head -n 1))"
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm_test.sh: missing $missing and cannot install them (needs root and apt-get): tests/test_slurm.py will skip"
    return 0
  fi
  echo "slurm_test.sh: apt-get install slurm-wlm munge (missing: $missing)"
  if DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; then
    echo "slurm_test.sh: installed $(slurmd -V 2>&1 | head -n 1)"
  else
    echo "slurm_test.sh: apt-get failed: tests/test_slurm.py will skip"
  fi
  return 0
}

# --- processes ----------------------------------------------------------------------------
# Pids of the processes whose environment holds NEUROVFM_SLURM_TEST_DIR=$1 (not this shell).
marked_pids() {
  local want="NEUROVFM_SLURM_TEST_DIR=$1" p kv
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" != $$ ] || continue
    while IFS= read -r -d '' kv; do
      if [ "$kv" = "$want" ]; then
        echo "$p"
        break
      fi
    done 2>/dev/null <"/proc/$p/environ" || true
  done
}

# wait_until SECONDS COMMAND...: run COMMAND every 0.2 s until it succeeds; 1 on timeout.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

alive() { [ -n "${1:-}" ] && ! gone "$1"; }
# ended: no such process, or a zombie (a container's init may never reap the daemons)
gone() {
  local stat
  kill -0 "$1" 2>/dev/null || return 0
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [ "${stat:0:1}" = Z ]
}
none_marked() { [ -z "$(marked_pids "$1")" ]; }
pid_of() { cat "$1" 2>/dev/null || true; }

# --- start --------------------------------------------------------------------------------
write_conf() {
  local dir=$1 host=$2 ctld_port=$3 slurmd_port=$4 cpus=$5
  cat >"$dir/slurm.conf" <<EOF
# written by scripts/slurm_test.sh: a one-node cluster for tests/test_slurm.py
ClusterName=neurovfmtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PropagateResourceLimits=NONE
MailProg=/bin/true
ReturnToService=2
KillWait=2
MinJobAge=3600
InactiveLimit=0
SlurmdParameters=config_overrides
NodeName=neurovfm NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=test Nodes=neurovfm Default=YES MaxTime=INFINITE State=UP
EOF
  printf 'CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n' >"$dir/cgroup.conf"
}

# the last lines of the daemons' logs, for a skip reason
logs_tail() {
  local dir=$1 f
  for f in "$dir"/log/*.log "$dir"/munge/munged.log; do
    [ -s "$f" ] || continue
    printf '  --- %s\n' "${f#"$dir"/}"
    tail -n 6 "$f" | sed 's/^/  /'
  done
}

node_idle() {
  local s
  s=$(sinfo -h -N -n neurovfm -o %t 2>/dev/null) || return 1
  [ "$s" = idle ]
}

cmd_start() {
  local dir=${1:?usage: slurm_test.sh start DIR [PID]} watch=${2:-}
  [ "$(uname -s)" = Linux ] || die_skip "not Linux"
  [ "$(id -u)" = 0 ] || die_skip "slurmd needs root (uid $(id -u))"
  local missing
  missing=$(missing_tools)
  [ -z "$missing" ] || die_skip "not installed: $missing (apt-get install slurm-wlm munge, or scripts/slurm_test.sh install)"
  case "$dir" in /*) ;; *) echo "slurm_test.sh: DIR must be absolute: $dir" >&2; exit 2 ;; esac
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || { echo "slurm_test.sh: $dir is not empty" >&2; exit 2; }
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  mkdir -m 755 "$dir/munge"
  # daemons and what they start carry the marker; LD_PRELOAD (a sanitizer runtime) is not theirs
  local run=(env -u LD_PRELOAD NEUROVFM_SLURM_TEST_DIR="$dir" SLURM_CONF="$dir/slurm.conf")
  export SLURM_CONF="$dir/slurm.conf"

  if [ -n "$watch" ]; then
    # stops the cluster when the test process ends, however it ends
    (setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" stop "$3"' \
      watchdog "$watch" "$root/scripts/slurm_test.sh" "$dir" </dev/null >>"$dir/log/watchdog.log" 2>&1 &
      echo $! >"$dir/watchdog.pid")
  fi

  # munge: a fresh key, a private socket
  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chmod 400 "$dir/munge/munge.key"
  local sock=$dir/munge/munge.socket
  "${run[@]}" munged --force --socket="$sock" --key-file="$dir/munge/munge.key" \
    --log-file="$dir/munge/munged.log" --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
    </dev/null >>"$dir/log/start.out" 2>&1 || true
  if ! wait_until 15 bash -c 'munge -n -S "$1" | unmunge -S "$1"' _ "$sock"; then
    local why
    why=$(logs_tail "$dir")
    cmd_stop "$dir" >/dev/null 2>&1 || true
    die_skip "munged did not start"$'\n'"$why"
  fi

  local host cpus attempt ctld_port slurmd_port
  host=$(uname -n)
  host=${host%%.*}
  cpus=$(nproc)
  [ "$cpus" -ge 4 ] || cpus=4  # four array tasks at once (config_overrides: slurmd takes the configured count)
  for attempt in 1 2 3; do
    ctld_port=$(free_port) && slurmd_port=$(free_port) || die_skip "no free TCP port on 127.0.0.1"
    [ "$ctld_port" != "$slurmd_port" ] || continue
    write_conf "$dir" "$host" "$ctld_port" "$slurmd_port" "$cpus"
    "${run[@]}" slurmctld -c -i </dev/null >>"$dir/log/start.out" 2>&1 || true
    if wait_until 20 bash -c 'scontrol ping | grep -q "is UP"'; then
      break
    fi
    # a port taken meanwhile: try others; anything else: give up
    if grep -q -i "address already in use" "$dir/log/slurmctld.log" 2>/dev/null && [ $attempt -lt 3 ]; then
      alive "$(pid_of "$dir/slurmctld.pid")" && kill "$(pid_of "$dir/slurmctld.pid")"
      mv "$dir/log/slurmctld.log" "$dir/log/slurmctld.attempt$attempt.log"
      continue
    fi
    local why
    why=$(logs_tail "$dir")
    cmd_stop "$dir" >/dev/null 2>&1 || true
    die_skip "slurmctld did not start"$'\n'"$why"
  done
  "${run[@]}" slurmd -N neurovfm </dev/null >>"$dir/log/start.out" 2>&1 || true
  if ! wait_until 30 node_idle; then
    local why
    why="node state '$(sinfo -h -N -n neurovfm -o %t 2>&1 || true)'"$'\n'$(logs_tail "$dir")
    cmd_stop "$dir" >/dev/null 2>&1 || true
    die_skip "slurmd did not start or its node is not idle: $why"
  fi
  echo "SLURM_CONF=$dir/slurm.conf"
  echo "SLURM_BIN=$(dirname "$(command -v sbatch)")"
  echo "SLURM_VERSION=$(sbatch -V 2>&1 | head -n 1)"
}

# --- stop ---------------------------------------------------------------------------------
cmd_stop() {
  local dir=${1:?usage: slurm_test.sh stop DIR}
  export SLURM_CONF=$dir/slurm.conf
  local ctld slurmd munged
  ctld=$(pid_of "$dir/slurmctld.pid")
  slurmd=$(pid_of "$dir/slurmd.pid")
  munged=$(pid_of "$dir/munge/munged.pid")
  if [ -f "$SLURM_CONF" ] && alive "$ctld"; then
    local jobs
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${jobs// /}" ]; then
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      wait_until 15 bash -c '[ -z "$(squeue -h 2>/dev/null)" ]' || true
    fi
  fi
  # SIGTERM: each daemon saves its state and exits (quicker than `scontrol shutdown`)
  local p
  for p in $slurmd $ctld $munged; do
    alive "$p" && kill -TERM "$p" 2>/dev/null || true
  done
  for p in $slurmd $ctld $munged; do
    wait_until 10 gone "$p" || kill -KILL "$p" 2>/dev/null || true
  done
  # whatever is left of this cluster: job steps, jobs, a daemon that did not write its pid file
  local left
  left=$(marked_pids "$dir")
  if [ -n "$left" ]; then
    # shellcheck disable=SC2086
    kill -TERM $left 2>/dev/null || true
    wait_until 5 none_marked "$dir" || true
    left=$(marked_pids "$dir")
    # shellcheck disable=SC2086
    [ -z "$left" ] || kill -KILL $left 2>/dev/null || true
    wait_until 5 none_marked "$dir" || true
  fi
  local watchdog
  watchdog=$(pid_of "$dir/watchdog.pid")
  if [ -n "$watchdog" ] && [ "$watchdog" != $$ ] && alive "$watchdog"; then
    kill -TERM "$watchdog" 2>/dev/null || true
  fi
  left=$(marked_pids "$dir")
  if [ -n "$left" ]; then
    echo "slurm_test.sh: processes of $dir still running: $left" >&2
    return 1
  fi
  echo "slurm_test.sh: stopped; no process of $dir left"
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  test)
    shift
    cd "$root"
    exec "${PYTHON:-python3}" -m pytest -p no:cacheprovider tests/test_slurm.py "$@"
    ;;
  *)
    sed -n '2,22p' "$0" >&2
    exit 2
    ;;
esac
