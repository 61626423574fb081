# Process identity helpers shared by start.sh and stop.sh (sourced, not run).
# A PID is only trusted together with its start time and executable: PIDs are reused here
# (/run is on disk, PID files outlive their processes) and zombies still answer kill -0.

# "STATE STARTTIME" of a PID from /proc/PID/stat (fields 3 and 22), or failure if it is gone.
proc_stat() {
    local s
    { read -r s </proc/"$1"/stat; } 2>/dev/null || return 1
    s=${s##*) }
    local -a f=($s)
    echo "${f[0]} ${f[19]}"
}
proc_exe() { local e; e=$(readlink /proc/"$1"/exe 2>/dev/null) || return 1; echo "${e% (deleted)}"; }
# A live (not zombie) process with this PID.
pid_live() { local s; s=$(proc_stat "$1") || return 1; [[ ${s%% *} != [ZX] ]]; }
# The very process that was recorded: same PID, same start time, same executable, not a zombie.
is_same() { # PID STARTTIME EXE
    local s; s=$(proc_stat "$1") || return 1
    [[ ${s%% *} != [ZX] && ${s#* } == "$2" && $(proc_exe "$1") == "$3" ]]
}
# The recorded "PID STARTTIME EXE" of daemon NAME, or nothing.
record_get() { [[ -f $STARTED ]] && awk -v n="$1" '$1 == n {print $2, $3, $4}' "$STARTED" | tail -n1; return 0; }
record_del() {
    [[ -f $STARTED ]] || return 0
    awk -v n="$1" '$1 != n' "$STARTED" >"$STARTED.tmp"; mv -f "$STARTED.tmp" "$STARTED"
}
