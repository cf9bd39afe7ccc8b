# droprun: the processes of one run. Shared by the helper (helper.sh) and the launcher,
# which both paste this text in. POSIX sh; needs /proc, grep -z, setsid and env -u, which
# GNU and BusyBox userlands both have.
#
# A process belongs to run ID if it is in the launcher's process group PGID, or if its
# environment carries DROPRUN_RUN_ID=ID: the helper starts the launcher with it, and every
# child inherits it, also one that left the group (setsid, a double fork, a daemon).

pause() {
    sleep 0.2 2>/dev/null || sleep 1
}

run_pids() {  # run_pids ID PGID KEEP: the live pids of the run, one per line, KEEP left out
    rp_id=$1 rp_pgid=$2 rp_keep=${3:-none}
    # /proc/PID/environ is the environment a process was started with; zombies have none.
    rp_tagged=$(grep -lsxzF "DROPRUN_RUN_ID=$rp_id" /proc/[0-9]*/environ 2>/dev/null)
    rp_seen=" $rp_keep $$ "
    # shellcheck disable=SC2086 # one /proc path per word
    rp_new $rp_tagged
    # The group counts only while its leader is this run's launcher: after a reboot the
    # recorded pgid may belong to a stranger.
    [ -n "$rp_pgid" ] || return 0
    case " $rp_tagged " in *"/proc/$rp_pgid/environ"*) ;; *) return 0 ;; esac
    # One grep for the members of the group (a shell loop that reads /proc/*/stat costs a
    # system call per byte): "PID (COMM) STATE PPID PGRP ...", COMM may hold ") ".
    rp_group=$(grep -lsE "^[0-9]+ \(.*\) [^ZX] -?[0-9]+ $rp_pgid " /proc/[0-9]*/stat 2>/dev/null)
    # shellcheck disable=SC2086
    rp_new $rp_group
}

rp_new() {  # rp_new /proc/PID/...: each PID not in $rp_seen yet, one per line (adds it)
    for rp_f; do
        rp_pid=${rp_f#/proc/}
        rp_pid=${rp_pid%%/*}
        case $rp_seen in *" $rp_pid "*) continue ;; esac
        rp_seen="$rp_seen$rp_pid "
        echo "$rp_pid"
    done
}

run_alive() {  # run_alive ID PGID: true if any process of the run is alive
    [ -n "$(run_pids "$1" "$2" "")" ]
}

run_going() {  # run_going ID PID: run_alive, asking the launcher PID first (one file
    # read, where run_alive reads every process's environment twice)
    { [ -n "$2" ] && grep -qsxzF "DROPRUN_RUN_ID=$1" "/proc/$2/environ"; } || run_alive "$1" "$2"
}

sweep() {  # sweep ID PGID GRACE KEEP: TERM every process of the run, KILL after GRACE s
    sw_pids=$(run_pids "$1" "$2" "$4")
    [ -n "$sw_pids" ] || return 0
    # shellcheck disable=SC2086 # one pid per word
    kill -TERM $sw_pids 2>/dev/null
    sw_waited=0
    while sw_pids=$(run_pids "$1" "$2" "$4") && [ -n "$sw_pids" ]; do
        if [ "$sw_waited" -ge "$(($3 * 5))" ]; then
            # shellcheck disable=SC2086
            kill -KILL $sw_pids 2>/dev/null
            break
        fi
        pause
        sw_waited=$((sw_waited + 1))
    done
    sw_waited=0
    while sw_pids=$(run_pids "$1" "$2" "$4") && [ -n "$sw_pids" ]; do
        [ "$sw_waited" -lt 50 ] || return 4
        # shellcheck disable=SC2086
        kill -KILL $sw_pids 2>/dev/null
        pause
        sw_waited=$((sw_waited + 1))
    done
}
