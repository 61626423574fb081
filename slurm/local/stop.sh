#!/usr/bin/env bash
# Stop the daemons that slurm/local/start.sh started, and only those (it records them in
# /var/lib/slurm_local/started as "NAME PID STARTTIME EXE"). Daemons that were already running
# when start.sh ran are left alone. Safe to run twice, and when nothing was started.
#
# Jobs still in the queue are cancelled first (when this script is about to stop slurmctld or
# slurmd and the controller answers). Environment: SLURM_LOCAL_STOP_TIMEOUT (15 s before KILL).
set -euo pipefail

T0=${EPOCHREALTIME/./}
STATE_DIR=/var/lib/slurm_local
STARTED=$STATE_DIR/started
STOP_TIMEOUT=${SLURM_LOCAL_STOP_TIMEOUT:-15}
ORDER=(slurmd slurmctld slurmdbd mariadbd munged)   # reverse of the start order
declare -A OWN_PIDFILE=([munged]=/run/munge/munged.pid [mariadbd]=/run/mysqld/mysqld.pid
                        [slurmdbd]=/run/slurmdbd.pid [slurmctld]=/run/slurmctld.pid [slurmd]=/run/slurmd.pid)

log() { echo "slurm-local: $*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "ERROR: must run as root"; exit 1; }

if [[ ! -s $STARTED ]]; then
    echo "slurm-local: nothing to stop (no daemon recorded as started by start.sh)"
    exit 0
fi
exec 9>"$STATE_DIR/lock"
flock -w 600 9 || { log "ERROR: another start.sh or stop.sh holds $STATE_DIR/lock"; exit 1; }

source "$(dirname "${BASH_SOURCE[0]}")/proc.sh"
rm_own_pidfile() { # NAME PID: the daemon's own PID file, if it still names PID (slurm cannot unlink it in /run)
    local f=${OWN_PIDFILE[$1]:-}
    [[ $1 == slurmd@* ]] && f=/run/slurmd-${1#slurmd@}.pid   # an instance of SLURM_LOCAL_NODES > 1
    if [[ -n $f && -f $f ]] && [[ $(awk 'NR==1 {print $1}' "$f" 2>/dev/null) == "$2" ]] && ! pid_live "$2"; then
        rm -f "$f"
    fi
}

# Cancel the jobs while the controller is still there (a stale queue survives in StateSaveLocation).
ours_alive() { local r; r=$(record_get "$1"); [[ -n $r ]] && is_same $r; }
# slurmd instances (SLURM_LOCAL_NODES > 1) are recorded as slurmd@NODE; they stop first, with slurmd.
SLURMDS=($(awk '$1 ~ /^slurmd(@[A-Za-z0-9_-]+)?$/ {print $1}' "$STARTED"))
ORDER=("${SLURMDS[@]}" "${ORDER[@]:1}")
ours=false
for name in slurmctld "${SLURMDS[@]}"; do ours_alive "$name" && ours=true; done
if $ours && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        log "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do   # KillWait=10: SIGTERM, then SIGKILL 10 s later
            [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
fi

KNOWN='^(slurmd(@[A-Za-z0-9_-]+)?|slurmctld|slurmdbd|mariadbd|munged)$'
if unknown=$(awk -v k="$KNOWN" '$1 !~ k' "$STARTED") && [[ -n $unknown ]]; then
    log "ignoring unknown lines in $STARTED: $unknown"
    awk -v k="$KNOWN" '$1 ~ k' "$STARTED" >"$STARTED.tmp"; mv -f "$STARTED.tmp" "$STARTED"
fi

stopped=()
for name in "${ORDER[@]}"; do
    rec=$(record_get "$name")
    [[ -n $rec ]] || continue
    read -r pid st exe <<<"$rec"
    if is_same "$pid" "$st" "$exe"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do is_same "$pid" "$st" "$exe" || break; sleep 0.1; done
        if is_same "$pid" "$st" "$exe"; then
            log "$name (PID $pid) still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do is_same "$pid" "$st" "$exe" || break; sleep 0.1; done
        fi
        if is_same "$pid" "$st" "$exe"; then
            log "ERROR: could not stop $name (PID $pid)"
            continue   # keep its record: a later run can try again
        fi
        stopped+=("$name")
    else
        log "$name (PID $pid) had already exited"
    fi
    rm_own_pidfile "$name" "$pid"
    record_del "$name"
done

us=$((${EPOCHREALTIME/./} - T0))
printf 'slurm-local: stopped: %s (%d.%01ds)\n' "${stopped[*]:-none}" $((us / 1000000)) $((us % 1000000 / 100000))
[[ ! -s $STARTED ]] || { log "ERROR: still running: $(cut -d' ' -f1 "$STARTED" | xargs)"; exit 1; }
