#!/usr/bin/env bash
# Start a single-node SLURM cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd run in the
# background (no systemd) and their PIDs go to $ECHOFLOW_SLURM_DIR/pids, which .ci/slurm-down.sh reads.
#
# Needs root (apt-get, /etc/slurm/slurm.conf, munge as its own user). Installs Debian's munge, slurmctld,
# slurmd and slurm-client when missing. Accounting is off, so any account name is accepted, `sacct` has no
# data and the snakemake SLURM plugin must poll with `squeue` (--slurm-status-command squeue).
# Finished jobs stay visible to squeue for MinJobAge seconds. That must exceed the plugin's longest gap
# between status checks (180 s in plugin 2.8), and the tests read the job list of a whole run after it
# ends, so it is an hour here (Slurm's default is 300 s).
set -euo pipefail

STATE_DIR="${ECHOFLOW_SLURM_DIR:-/tmp/echoflow-slurm}"
PID_FILE="$STATE_DIR/pids"
SLURM_CONF_PATH=/etc/slurm/slurm.conf
CONF_MARKER="# Written by echoflow .ci/slurm-up.sh"
PARTITION="${ECHOFLOW_SLURM_PARTITION:-debug}"
MIN_JOB_AGE_S=3600
READY_TIMEOUT_S=60

log() { echo "slurm-up: $*" >&2; }

if [[ $EUID -ne 0 ]]; then
    log "must run as root (installs packages and writes $SLURM_CONF_PATH); rerun with sudo."
    exit 1
fi

# Leave alone a cluster that someone else configured.
if [[ -f $SLURM_CONF_PATH ]] && ! grep -qxF "$CONF_MARKER" "$SLURM_CONF_PATH"; then
    log "$SLURM_CONF_PATH exists and was not written by this script; remove it or run on a machine without SLURM."
    exit 1
fi

# Daemons from an earlier run of this script are stopped first, so every start has a clean state.
if [[ -f $PID_FILE ]]; then
    log "found $PID_FILE from an earlier start; stopping those processes first"
    bash "$(dirname "$0")/slurm-down.sh"
fi

install_packages() {
    local missing=()
    local package
    for package in munge slurmctld slurmd slurm-client; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$package")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return
    fi
    log "installing ${missing[*]}"
    # The packages' maintainer scripts start the services through their init scripts unless
    # policy-rc.d forbids it. Those daemons would not be in the PID file, so a policy-rc.d that
    # forbids every start is put in place for the install when the machine has none.
    local temporary_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        temporary_policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$temporary_policy"
        chmod 0755 "$temporary_policy"
    fi
    local status=0
    timeout -k 10 300 apt-get update -qq || status=$?
    if ((status == 0)); then
        DEBIAN_FRONTEND=noninteractive timeout -k 10 600 \
            apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client \
            >"$STATE_DIR/apt.log" 2>&1 || status=$?
    fi
    if [[ -n $temporary_policy ]]; then
        rm -f "$temporary_policy"
    fi
    if ((status != 0)); then
        log "apt-get failed with exit status $status; see $STATE_DIR/apt.log"
        tail -20 "$STATE_DIR/apt.log" >&2 || true
        exit 1
    fi
}

# Write slurm.conf before any Slurm command runs: without it the client looks up the controller in DNS.
write_slurm_conf() {
    local cpus memory_mb
    cpus=$(nproc)
    # Leave a tenth of the memory to the operating system and the daemons.
    memory_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE_DIR/ctld" "$STATE_DIR/slurmd"
    cat >"$SLURM_CONF_PATH" <<EOF
$CONF_MARKER
# One node on 127.0.0.1 for the echoflow tests, no accounting.
ClusterName=echoflow
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
MinJobAge=$MIN_JOB_AGE_S
# One GPU for the scheduler only (gres.conf maps it to /dev/null), so a GPU request such as
# sbatch --gpus=1 is scheduled and its allocation can be checked. Jobs that get it run on the CPU.
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    cat >/etc/slurm/gres.conf <<EOF
$CONF_MARKER
NodeName=localhost Name=gpu File=/dev/null Count=1
EOF
    log "wrote $SLURM_CONF_PATH (CPUs=$cpus RealMemory=$memory_mb, partition $PARTITION)"
}

ensure_munge_key() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
}

# Start a daemon in its foreground mode as a background job of this shell and record its PID.
start_daemon() {
    local name=$1
    shift
    "$@" </dev/null >"$STATE_DIR/$name.out" 2>&1 &
    echo "$! $name" >>"$PID_FILE"
    log "started $name (PID $!)"
}

wait_for() {
    local description=$1 command=$2
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until eval "$command" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${READY_TIMEOUT_S}s waiting for $description; logs in $STATE_DIR:"
            tail -n 20 "$STATE_DIR"/*.log "$STATE_DIR"/*.out >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

started_at=$SECONDS
mkdir -p "$STATE_DIR"
# Logs of an earlier start would be mistaken for this one's when a daemon fails.
rm -f "$STATE_DIR"/*.log "$STATE_DIR"/*.out
install_packages
write_slurm_conf
ensure_munge_key
: >"$PID_FILE"
# A failed start stops the daemons it has started.
trap 'status=$?; if ((status != 0)); then bash "$(dirname "$0")/slurm-down.sh"; fi' EXIT

start_daemon munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
wait_for "munged" "munge -n </dev/null | unmunge"

# -c starts the controller without the job state of an earlier run.
start_daemon slurmctld /usr/sbin/slurmctld -D -c -f "$SLURM_CONF_PATH"
wait_for "slurmctld" "scontrol ping | grep -q UP"

start_daemon slurmd /usr/sbin/slurmd -D -N localhost -f "$SLURM_CONF_PATH"
wait_for "node localhost to be idle" "sinfo -h -n localhost -o %T | grep -qx idle"

log "cluster is up in $((SECONDS - started_at))s; partition $PARTITION, state in $STATE_DIR"
sinfo >&2
