#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (Debian 12, slurm-wlm 22.05, root, no
# systemd), or check that it is already up. Idempotent: when everything is running it only
# checks, which takes well under a second. See slurm/README.md for the why of each step.
#
#   bash slurm/local/start.sh            # munge + MariaDB + slurmdbd + slurmctld + slurmd
#   SLURM_LOCAL_ACCOUNTING=0 bash slurm/local/start.sh   # no slurmdbd/MariaDB (no sacct)
#   SLURM_LOCAL_NODES=2 bash slurm/local/start.sh        # nodes n1, n2: one slurmd each, on this host
#
# Environment: SLURM_LOCAL_ACCOUNTING (1), SLURM_LOCAL_NODES (1: one node named `hostname -s`;
# N > 1: nodes n1..nN, each its own slurmd instance, which needs a Slurm built with
# --enable-multiple-slurmd, as Debian's is), SLURM_LOCAL_TIMEOUT (60 s per daemon),
# SLURM_LOCAL_STOP_TIMEOUT (15 s before KILL when a daemon must be restarted).
# Stdout gets one summary line; progress and errors go to stderr.
set -euo pipefail
set +m # no job control: a background job must not lead its own process group (setsid would fork)

T0=${EPOCHREALTIME/./}
STATE_DIR=/var/lib/slurm_local
LOG_DIR=$STATE_DIR/logs
STARTED=$STATE_DIR/started   # lines "NAME PID STARTTIME EXE": the daemons this script started
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
NODES=${SLURM_LOCAL_NODES:-1}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
STOP_TIMEOUT=${SLURM_LOCAL_STOP_TIMEOUT:-15}
CLUSTER=localci

log() { echo "slurm-local: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
[[ $NODES =~ ^[1-9][0-9]?$ ]] || die "SLURM_LOCAL_NODES=$NODES: expected a node count from 1 to 99"

declare -A EXE=([munged]=/usr/sbin/munged [mariadbd]=/usr/sbin/mariadbd [slurmdbd]=/usr/sbin/slurmdbd
                [slurmctld]=/usr/sbin/slurmctld [slurmd]=/usr/sbin/slurmd)
declare -A OWN_PIDFILE=([munged]=/run/munge/munged.pid [mariadbd]=/run/mysqld/mysqld.pid
                        [slurmdbd]=/run/slurmdbd.pid [slurmctld]=/run/slurmctld.pid [slurmd]=/run/slurmd.pid)
declare -A LOGS=([munged]=/var/log/munge/munged.log [mariadbd]=
                 [slurmdbd]=/var/log/slurm/slurmdbd.log [slurmctld]=/var/log/slurm/slurmctld.log
                 [slurmd]=/var/log/slurm/slurmd.log)
DAEMONS=(munged)
[[ $ACCOUNTING != 0 ]] && DAEMONS+=(mariadbd slurmdbd)
DAEMONS+=(slurmctld)
# The slurmd daemons: "slurmd" for the one node named after the host, or one instance "slurmd@nI"
# (slurmd -N nI) per node. kind() maps an instance to the tables above; its PID file and log are its own.
if ((NODES == 1)); then
    SLURMDS=(slurmd)
else
    SLURMDS=()
    for ((i = 1; i <= NODES; i++)); do
        SLURMDS+=("slurmd@n$i")
        OWN_PIDFILE[slurmd@n$i]=/run/slurmd-n$i.pid
        LOGS[slurmd@n$i]=/var/log/slurm/slurmd-n$i.log
    done
fi
DAEMONS+=("${SLURMDS[@]}")
kind() { echo "${1%%@*}"; }

mkdir -p "$STATE_DIR" "$LOG_DIR"
chmod 0755 "$STATE_DIR"
# One start/stop at a time. The daemons are launched with fd 9 closed so they never hold the lock.
exec 9>"$STATE_DIR/lock"
flock -w 600 9 || die "another slurm/local/start.sh or stop.sh holds $STATE_DIR/lock"

# ---------------------------------------------------------------- processes
source "$(dirname "${BASH_SOURCE[0]}")/proc.sh"
record_add() { # NAME PID
    local s; s=$(proc_stat "$2") || die "$1 (PID $2) vanished right after start; see $LOG_DIR/$1.log"
    record_del "$1"
    echo "$1 $2 ${s#* } ${EXE[$(kind "$1")]}" >>"$STARTED"
}
# PID of the running daemon NAME, whoever started it (the PID we recorded, else any live
# process running its binary: a daemon someone else started is used, never recorded).
running_pid() {
    local rec pid st exe
    rec=$(record_get "$1")
    if [[ -n $rec ]]; then
        read -r pid st exe <<<"$rec"
        if is_same "$pid" "$st" "$exe"; then echo "$pid"; return 0; fi
        record_del "$1"   # it died (or its PID now belongs to something else)
    fi
    local k; k=$(kind "$1")
    for pid in $(pgrep -x "$k|${k}-wlm" 2>/dev/null || true); do
        pid_live "$pid" && [[ $(proc_exe "$pid") == "${EXE[$k]}" ]] || continue
        [[ $k != slurmd ]] || [[ $(node_arg "$pid") == "${1#slurmd}" ]] || continue   # the same instance
        echo "$pid"; return 0
    done
    return 1
}
# "@NODE" for a slurmd started with -N NODE, nothing for one without (the node named after the host).
node_arg() {
    local -a argv
    mapfile -d '' -t argv </proc/"$1"/cmdline 2>/dev/null || return 0
    local i
    for ((i = 0; i < ${#argv[@]} - 1; i++)); do [[ ${argv[i]} == -N ]] && { echo "@${argv[i + 1]}"; return 0; }; done
}
terminate() { # NAME PID: TERM, then KILL after STOP_TIMEOUT; a zombie counts as gone
    local name=$1 pid=$2 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do pid_live "$pid" || break; sleep 0.1; done
    if pid_live "$pid"; then
        log "$name (PID $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do pid_live "$pid" || break; sleep 0.1; done
    fi
    local f=${OWN_PIDFILE[$name]:-}
    if [[ -n $f && -f $f ]] && [[ $(awk 'NR==1 {print $1}' "$f" 2>/dev/null) == "$pid" ]]; then rm -f "$f"; fi
}

tail_logs() {
    local name=$1 f
    for f in "$LOG_DIR/$name.log" ${LOGS[$name]:-}; do
        [[ -s $f ]] || continue
        echo "---- last lines of $f" >&2
        tail -n 25 "$f" >&2
    done
}
fail() { # NAME MESSAGE
    log "ERROR: $2"
    tail_logs "$1"
    exit 1
}
# Wait until the command succeeds; fail early if the daemon PID dies.
wait_for() { # NAME PID WHAT CMD...
    local name=$1 pid=$2 what=$3 deadline=$((SECONDS + TIMEOUT))
    shift 3
    until "$@" >/dev/null 2>&1; do
        if [[ -n $pid ]] && ! pid_live "$pid"; then fail "$name" "$name (PID $pid) exited while waiting for $what"; fi
        ((SECONDS < deadline)) || fail "$name" "$name: no $what after ${TIMEOUT}s"
        sleep 0.1
    done
}
# Start a daemon in its foreground mode, in its own session, with stdin/stdout/stderr detached
# from the caller (so `$(start.sh)` and CI pipes return) and without the lock fd.
launch() { # NAME CMD...
    local name=$1 pid i
    shift
    echo "==== $(date '+%F %T') start: $*" >>"$LOG_DIR/$name.log"
    setsid "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 9>&- &
    pid=$!
    # setsid and setpriv exec in place: wait until the PID runs the daemon's binary, then record it.
    for ((i = 0; i < 100; i++)); do
        pid_live "$pid" || fail "$name" "$name exited right after start"
        [[ $(proc_exe "$pid") == "${EXE[$(kind "$name")]}" ]] && break
        sleep 0.05
    done
    if [[ $(proc_exe "$pid") != "${EXE[$(kind "$name")]}" ]]; then
        local seen; seen=$(proc_exe "$pid" || true)
        kill -KILL "$pid" 2>/dev/null || true
        fail "$name" "PID $pid runs ${seen:-?}, not ${EXE[$(kind "$name")]} (did setsid fork?)"
    fi
    record_add "$name" "$pid"
    LAUNCHED_PID=$pid
}

# ---------------------------------------------------------------- packages
PKGS=(slurmctld slurmd slurm-client munge)
[[ $ACCOUNTING != 0 ]] && PKGS+=(slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) == ii* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get to install them"
    log "installing ${missing[*]} (apt log: $LOG_DIR/apt.log)"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends "${PKGS[@]}" >>"$LOG_DIR/apt.log" 2>&1 9>&-; }
    apt_update() { apt-get update -q >>"$LOG_DIR/apt.log" 2>&1 9>&-; }
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt_update || { tail -n 25 "$LOG_DIR/apt.log" >&2; die "apt-get update failed"; }
        apt_install || { tail -n 25 "$LOG_DIR/apt.log" >&2; die "apt-get install failed"; }
    elif ! apt_install; then   # stale package lists: update once and retry
        log "apt-get install failed; running apt-get update and retrying"
        apt_update && apt_install || { tail -n 25 "$LOG_DIR/apt.log" >&2; die "apt-get install failed"; }
    fi
fi

# Debian installs slurmctld, slurmd and slurmstepd as alternatives (/usr/sbin/slurmd ->
# /etc/alternatives/slurmd -> /usr/sbin/slurmd-wlm): /proc/PID/exe shows the real file.
for name in "${!EXE[@]}"; do
    [[ $name == mariadbd || $name == slurmdbd ]] && [[ $ACCOUNTING == 0 ]] && [[ ! -e ${EXE[$name]} ]] && continue
    EXE[$name]=$(readlink -f "${EXE[$name]}") || die "${EXE[$name]} not found"
done

# ---------------------------------------------------------------- directories and munge key
# No systemd: nothing creates the runtime directories that its units would (RuntimeDirectory=).
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0600 /etc/munge/munge.key
install -d -o slurm -g slurm -m 0755 /var/log/slurm /var/lib/slurm /var/lib/slurm/slurmctld
install -d -m 0755 /var/lib/slurm/slurmd
for ((i = 1; i <= NODES && NODES > 1; i++)); do install -d -m 0755 "/var/lib/slurm/slurmd-n$i"; done
if [[ $ACCOUNTING != 0 ]]; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising the MariaDB data directory"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOG_DIR/mariadbd.log" 2>&1 9>&- ||
            fail mariadbd "mariadb-install-db failed"
    fi
fi

# ---------------------------------------------------------------- configuration
HN=$(hostname -s)
# The node line is `slurmd -C` as is (sockets/cores/threads), with 95 % of the detected memory:
# a RealMemory above what slurmd detects drains the node.
hw=$(slurmd -C 2>/dev/null | head -n1)
[[ $hw == NodeName=* ]] || die "slurmd -C printed no node line"
mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[[ -n $mem ]] || die "no RealMemory in: $hw"
hw=$(sed -e "s/^NodeName=[^ ]*//" -e "s/ RealMemory=[0-9]*/ RealMemory=$((mem * 95 / 100))/" <<<"$hw")
# Several nodes: slurmd instances on this host, each with its own port, PID file, spool and log
# (%n is the node name; these need a Slurm built with --enable-multiple-slurmd). Every node is
# given the whole machine's CPUs and memory, so the cluster counts NODES times what exists.
if ((NODES == 1)); then
    NODE_NAMES=($HN)
    SLURMD_FILES="SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmdLogFile=/var/log/slurm/slurmd.log"
    NODE_LINES="NodeName=$HN NodeAddr=127.0.0.1$hw State=UNKNOWN"
else
    NODE_NAMES=()
    SLURMD_FILES="SlurmdPidFile=/run/slurmd-%n.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd-%n
SlurmdLogFile=/var/log/slurm/slurmd-%n.log"
    NODE_LINES=
    for ((i = 1; i <= NODES; i++)); do
        NODE_NAMES+=("n$i")
        NODE_LINES+="${NODE_LINES:+$'\n'}NodeName=n$i NodeHostname=$HN NodeAddr=127.0.0.1 Port=$((6830 + i))$hw State=UNKNOWN"
    done
fi
if [[ $ACCOUNTING != 0 ]]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819"
else
    acct="AccountingStorageType=accounting_storage/none"
fi
SLURM_CONF="# Written by slurm/local/start.sh; edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$HN(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
$SLURMD_FILES
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$acct
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
KillWait=10
$NODE_LINES
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"

if [[ ! -s $STATE_DIR/dbpass ]]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE_DIR/dbpass")
fi
chmod 0600 "$STATE_DIR/dbpass"
DBPASS=$(<"$STATE_DIR/dbpass")
DBD_CONF="# Written by slurm/local/start.sh; edits are overwritten.
AuthType=auth/munge
DbdHost=$HN
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db"

# Writes PATH when its content differs; returns 0 when it wrote (the daemons must restart).
write_if_changed() { # PATH MODE OWNER CONTENT
    local path=$1 mode=$2 owner=$3 content=$4 tmp
    if [[ -f $path && $(<"$path") == "$content" ]]; then
        chmod "$mode" "$path"; chown "$owner" "$path"
        return 1
    fi
    tmp=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"; chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
    log "wrote $path"
}
mkdir -p /etc/slurm
declare -A RESTART=()
# slurm.conf first: sacctmgr finds slurmdbd through it.
if write_if_changed /etc/slurm/slurm.conf 0644 root:root "$SLURM_CONF"; then RESTART[slurmctld]=1; RESTART[slurmd]=1; fi
if [[ $ACCOUNTING != 0 ]] && write_if_changed /etc/slurm/slurmdbd.conf 0600 slurm:slurm "$DBD_CONF"; then
    RESTART[slurmdbd]=1
fi

# ---------------------------------------------------------------- daemons
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
mariadb_ok() { mariadb-admin --protocol=socket -s ping >/dev/null 2>&1; }
sacctmgr_ok() { timeout 10 sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }
ctld_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
# The node answers and (when SINCE is given) slurmd registered at or after SINCE (epoch seconds):
# after a restart slurmctld restores the node as idle from its state before slurmd is back.
NODE_STATE=
declare -A RESUMED=()
node_ok() { # [SINCE]: every node of NODE_NAMES
    local node
    for node in "${NODE_NAMES[@]}"; do one_node_ok "$node" "${1:-}" || return 1; done
}
one_node_ok() { # NODE [SINCE]
    NODE_STATE=$(timeout 10 sinfo -h -n "$1" -o %T 2>/dev/null | head -n1) || return 1
    if [[ $NODE_STATE == drain* || $NODE_STATE == *drain ]] && [[ -z ${RESUMED[$1]:-} ]]; then
        RESUMED[$1]=1; log "node $1 is $NODE_STATE: resuming it"
        scontrol update NodeName="$1" State=RESUME >/dev/null 2>&1 || true
    fi
    [[ $NODE_STATE =~ ^(idle|mixed|allocated|completing)$ ]] || return 1
    if [[ -n ${2:-} ]]; then
        local t ts
        t=$(timeout 10 scontrol show node "$1" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*') || return 1
        ts=$(date -d "${t#*=}" +%s 2>/dev/null) || return 1
        ((ts >= $2)) || return 1
    fi
}
ensure_db_user() {
    mariadb --protocol=socket -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" 2>>"$LOG_DIR/mariadbd.log" ||
        fail mariadbd "could not create the MariaDB user slurm"
}
ensure_cluster() {
    if ! timeout 10 sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        timeout 20 sacctmgr -i add cluster "$CLUSTER" >>"$LOG_DIR/slurmdbd.log" 2>&1 ||
            fail slurmdbd "sacctmgr add cluster $CLUSTER failed"
        log "added cluster $CLUSTER to the accounting database"
    fi
    touch "$STATE_DIR/cluster_added"
}

STARTED_NOW=() ALREADY=() SLURMD_SINCE= SLURMD_PIDS=()
# slurmd instances of another node count (recorded by an earlier start.sh) serve nodes that are gone.
if [[ -f $STARTED ]]; then
    for name in $(awk '$1 ~ /^slurmd(@|$)/ {print $1}' "$STARTED"); do
        [[ " ${SLURMDS[*]} " == *" $name "* ]] && continue
        rec=$(record_get "$name"); read -r pid st exe <<<"$rec"
        if is_same "$pid" "$st" "$exe"; then log "stopping $name (PID $pid): not a node of this configuration"; terminate "$name" "$pid"; fi
        record_del "$name"
    done
fi
for name in "${DAEMONS[@]}"; do
    pid=$(running_pid "$name") || pid=
    if [[ -n $pid && -n ${RESTART[$(kind "$name")]:-} ]]; then
        log "configuration changed: restarting $name (PID $pid)"
        terminate "$name" "$pid"
        record_del "$name"
        pid=
    fi
    if [[ -n $pid ]]; then
        ALREADY+=("$name")
        [[ $name == slurmdbd && ! -f $STATE_DIR/cluster_added ]] && ensure_cluster
        continue
    fi
    case $name in
        munged)
            # setpriv execs in place (runuser would fork and stay the parent).
            launch munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F
            wait_for munged "$LAUNCHED_PID" "munge credential round trip" munge_ok ;;
        mariadbd)
            launch mariadbd /usr/sbin/mariadbd --user=mysql --skip-networking
            wait_for mariadbd "$LAUNCHED_PID" "answer to mariadb-admin ping" mariadb_ok ;;
        slurmdbd)
            ensure_db_user
            launch slurmdbd /usr/sbin/slurmdbd -D
            wait_for slurmdbd "$LAUNCHED_PID" "answer to sacctmgr" sacctmgr_ok
            ensure_cluster ;;
        slurmctld)
            launch slurmctld /usr/sbin/slurmctld -D
            wait_for slurmctld "$LAUNCHED_PID" "UP from scontrol ping" ctld_ok ;;
        slurmd)
            SLURMD_SINCE=$(date +%s)
            launch slurmd /usr/sbin/slurmd -D
            SLURMD_PIDS+=("$LAUNCHED_PID") ;;
        slurmd@*)
            SLURMD_SINCE=${SLURMD_SINCE:-$(date +%s)}
            launch "$name" /usr/sbin/slurmd -D -N "${name#slurmd@}"
            SLURMD_PIDS+=("$LAUNCHED_PID") ;;
    esac
    STARTED_NOW+=("$name")
done

# Each slurmd must have registered and its node must answer (one node: no -N, NodeName is `hostname -s`).
wait_for "${SLURMDS[0]}" "${SLURMD_PIDS[0]:-}" "idle node(s) ${NODE_NAMES[*]}${SLURMD_SINCE:+ registered after launch}" \
    node_ok "$SLURMD_SINCE"

us=$((${EPOCHREALTIME/./} - T0))
printf 'slurm-local: cluster %s up, node %s %s, accounting %s; started: %s; already running: %s (%d.%01ds)\n' \
    "$CLUSTER" "$(IFS=,; echo "${NODE_NAMES[*]}")" "$NODE_STATE" "$([[ $ACCOUNTING != 0 ]] && echo on || echo off)" \
    "${STARTED_NOW[*]:-none}" "${ALREADY[*]:-none}" $((us / 1000000)) $((us % 1000000 / 100000))
