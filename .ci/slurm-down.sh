#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by .ci/slurm-up.sh: cancel its jobs, then end exactly the
# processes listed in $ECHOFLOW_SLURM_DIR/pids (SIGTERM, then SIGKILL after 10 s). Safe to run twice.
set -uo pipefail

STATE_DIR="${ECHOFLOW_SLURM_DIR:-/tmp/echoflow-slurm}"
PID_FILE="$STATE_DIR/pids"
STOP_TIMEOUT_S=10

log() { echo "slurm-down: $*" >&2; }

if [[ ! -f $PID_FILE ]]; then
    log "no $PID_FILE; nothing to stop"
    exit 0
fi

# Jobs still queued or running would leave slurmstepd processes behind once slurmd is gone.
job_ids=$(timeout -k 5 10 squeue -h -o %i 2>/dev/null || true)
if [[ -n $job_ids ]]; then
    log "cancelling jobs: $(echo "$job_ids" | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one argument per job id
    timeout -k 5 10 scancel $job_ids || log "scancel failed; stopping the daemons anyway"
    sleep 1
fi

# A PID counts as ours only while its command name is still the daemon recorded beside it, so a PID
# that the kernel has since reused for another program is left alone.
is_ours() {
    local pid=$1 name=$2
    [[ -r /proc/$pid/comm ]] && [[ $(cat "/proc/$pid/comm") == "$name" ]]
}

# Stop in reverse start order: slurmd, slurmctld, munged.
mapfile -t entries < <(tac "$PID_FILE")
for entry in "${entries[@]}"; do
    read -r pid name <<<"$entry"
    if is_ours "$pid" "$name"; then
        log "stopping $name (PID $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    fi
done

deadline=$((SECONDS + STOP_TIMEOUT_S))
for entry in "${entries[@]}"; do
    read -r pid name <<<"$entry"
    while is_ours "$pid" "$name" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if is_ours "$pid" "$name"; then
        log "$name (PID $pid) did not stop within ${STOP_TIMEOUT_S}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
done

rm -f "$PID_FILE"
log "stopped"
