# droprun helper: passed inline on every call as
#   sh -c "$HELPER" droprun-helper VERB ARGS...
# so nothing is installed on a server and versions never skew. Every argument is a
# separate word; nothing here evaluates an argument as shell code except `power`, whose
# command comes from the agent's own config. POSIX sh plus coreutils/findutils.

die() {  # die STATUS MESSAGE
    printf 'droprun-helper: %s\n' "$2" >&2
    exit "$1"
}

need_args() {  # need_args COUNT GIVEN
    [ "$2" -ge "$1" ] || die 2 "$VERB needs $1 argument(s)"
}

group_alive() {  # group_alive PGID: true if a process other than a zombie is in the group
    ga_pgid=$1
    kill -0 -"$ga_pgid" 2>/dev/null || return 1
    [ -r /proc/self/stat ] || return 0
    # A group of only zombies is dead (PID 1 of a container may never reap them).
    for ga_f in /proc/[0-9]*/stat; do
        read -r ga_line <"$ga_f" 2>/dev/null || continue
        # shellcheck disable=SC2086 # split "state ppid pgrp ..." after the command name
        set -- ${ga_line##*) }
        if [ "$3" = "$ga_pgid" ] && [ "$1" != Z ] && [ "$1" != X ]; then
            return 0
        fi
    done
    return 1
}

read_pid() {  # read_pid RUNDIR: print the launcher's pid, or nothing
    [ -f "$1/.droprun/pid" ] && cat -- "$1/.droprun/pid"
    return 0
}

pause() {
    sleep 0.2 2>/dev/null || sleep 1
}

do_prepare() {  # prepare CACHE RUNDIR: make the run dir from the cache (hard links)
    cache=$1 run=$2
    [ -d "$cache" ] || die 3 "cache $cache does not exist"
    if [ -d "$run" ]; then
        mkdir -p -- "$run/.droprun" || die 3 "cannot create $run/.droprun"
        echo exists
        return 0
    fi
    tmp="$run.preparing"
    rm -rf -- "$tmp"
    mkdir -p -- "$(dirname -- "$run")" || die 3 "cannot create the parent of $run"
    if ! cp -al -- "$cache" "$tmp" 2>/dev/null; then
        rm -rf -- "$tmp"
        cp -a -- "$cache" "$tmp" || die 3 "cannot copy $cache to $tmp"
    fi
    mkdir -p -- "$tmp/.droprun" || die 3 "cannot create $tmp/.droprun"
    mv -- "$tmp" "$run" || die 3 "cannot rename $tmp to $run"
    echo created
}

do_write() {  # write FILE: stdin to FILE, atomically
    tmp="$1.tmp.$$"
    cat >"$tmp" || { rm -f -- "$tmp"; die 3 "cannot write $1"; }
    mv -f -- "$tmp" "$1" || die 3 "cannot rename $tmp to $1"
}

do_launch() {  # launch RUNDIR: start .droprun/launch.sh once, detached; print its pid
    cd -- "$1" || die 3 "run dir $1 does not exist"
    [ -f .droprun/launch.sh ] || die 3 "$1/.droprun/launch.sh does not exist"
    if mkdir .droprun/launched 2>/dev/null; then
        command -v setsid >/dev/null 2>&1 || die 3 "setsid is not installed on this host"
        if command -v bash >/dev/null 2>&1; then shell=bash; else shell=sh; fi
        { setsid nohup "$shell" .droprun/launch.sh >.droprun/log 2>&1 </dev/null & }
    fi
    waited=0
    while [ ! -s .droprun/pid ]; do
        [ "$waited" -lt 1000 ] || die 4 "launched, but no pid was recorded within 20 s"
        # The launcher writes its pid within milliseconds: poll finely (whole
        # seconds where sleep takes no fractions, which also ends the loop in time).
        sleep 0.02 2>/dev/null || { sleep 1; waited=$((waited + 49)); }
        waited=$((waited + 1))
    done
    cat .droprun/pid
}

do_status() {  # status RUNDIR: print "STATE PID EXIT" ("-" where unknown)
    d="$1/.droprun"
    if [ ! -d "$d/launched" ]; then
        echo "not_started - -"
        return 0
    fi
    pid=$(read_pid "$1")
    if [ ! -f "$d/exit" ] && [ -n "$pid" ] && group_alive "$pid"; then
        echo "running $pid -"
    elif [ -f "$d/exit" ]; then  # checked again: the launcher may have just finished
        echo "exited ${pid:--} $(cat -- "$d/exit")"
    else
        echo "vanished ${pid:--} -"
    fi
}

do_log() {  # log RUNDIR OFFSET LIMIT: print LIMIT bytes of the log from OFFSET
    [ -f "$1/.droprun/log" ] || return 0
    tail -c +"$(($2 + 1))" -- "$1/.droprun/log" | head -c "$3"
}

do_list() {  # list RUNDIR DIR: "NOW ALIVE\n", then "TYPE\0PATH\0SIZE\0MTIME\0" per file/link
    pid=$(read_pid "$1")
    alive=0
    [ -n "$pid" ] && group_alive "$pid" && alive=1
    echo "$(date +%s.%N) $alive"
    [ -d "$2" ] || return 0
    cd -- "$2" || die 3 "cannot enter $2"
    find . \( -type f -o -type l \) -printf '%y\0%P\0%s\0%T@\0'
}

do_kill() {  # kill RUNDIR GRACE: TERM the group, KILL it after GRACE seconds
    pid=$(read_pid "$1")
    [ -n "$pid" ] || return 0
    group_alive "$pid" || return 0
    kill -TERM -"$pid" 2>/dev/null
    waited=0
    while group_alive "$pid"; do
        if [ "$waited" -ge "$(($2 * 5))" ]; then
            kill -KILL -"$pid" 2>/dev/null
            break
        fi
        pause
        waited=$((waited + 1))
    done
    waited=0
    while group_alive "$pid"; do
        [ "$waited" -lt 50 ] || die 4 "process group $pid survived KILL"
        pause
        waited=$((waited + 1))
    done
}

do_cleanup() {  # cleanup RUNDIR: remove a run dir (never anything else)
    case "${1##*/}" in
        run_[0-9]*) rm -rf -- "$1" "$1.preparing" ;;
        *) die 2 "refusing to remove $1: not a run dir" ;;
    esac
}

do_gpus() {  # gpus [IDS]: one GPU name per line, or "no-nvidia-smi"
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo no-nvidia-smi
        return 0
    fi
    if [ -n "$1" ]; then
        nvidia-smi --query-gpu=name --format=csv,noheader -i "$1"
    else
        nvidia-smi --query-gpu=name --format=csv,noheader
    fi
}

ei_section() {  # ei_section NAME: start a section of envinfo's output
    printf '\n@@droprun-env %s@@\n' "$1"
}

ei_run() {  # ei_run CMD...: its output (at most 1 MiB, 30 s), or "@@absent@@" if it fails
    # timeout runs programs only: a shell function (conda's is one) runs as it is.
    if command -v timeout >/dev/null 2>&1 && case $(command -v "$1") in /*) true ;; *) false ;; esac; then
        ei_out=$(timeout 30 "$@" 2>&1) && ei_st=0 || ei_st=$?
    else
        ei_out=$("$@" 2>&1) && ei_st=0 || ei_st=$?
    fi
    if [ "$ei_st" -eq 0 ]; then printf '%s\n' "$ei_out" | head -c 1048576; else echo @@absent@@; fi
}

ei_home() {  # ei_home PATH: a leading ~/ or $HOME/ made the home folder
    case $1 in
        '~'/*) printf '%s/%s\n' "$HOME" "${1#??}" ;;
        '$HOME'/*) printf '%s/%s\n' "$HOME" "${1#??????}" ;;
        *) printf '%s\n' "$1" ;;
    esac
}

do_envinfo() {  # envinfo CONDA_ENV VENV GPUS PIP_KEY CONDA_KEY CONDA_SH...: the run's
    # environment, in sections. pip freeze and conda list take seconds: they print
    # "@@same@@" instead while their key (the state of the package folders) equals the one
    # given, which the caller got from an earlier call.
    ei_conda=$1 ei_venv=$2 ei_gpus=$3 ei_known_pip=$4 ei_known_conda=$5
    shift 5
    if [ -n "$ei_conda" ]; then  # activated as the launcher does it, never failing here
        ei_found=
        for ei_f in "$@"; do
            ei_f=$(ei_home "$ei_f")
            if [ -f "$ei_f" ]; then
                . "$ei_f" >/dev/null 2>&1 && ei_found=$ei_f
                break
            fi
        done
        if [ -z "$ei_found" ] && command -v conda >/dev/null 2>&1; then
            eval "$(conda shell.posix hook 2>/dev/null)" >/dev/null 2>&1 && ei_found=PATH
        fi
        ei_key=
        ei_on=
        if [ -n "$ei_found" ] && conda activate "$ei_conda" >/dev/null 2>&1; then
            ei_on=1
            ei_state=$(ls -l -- "${CONDA_PREFIX:-/nonexistent}/conda-meta" 2>/dev/null) &&
                [ -n "$ei_state" ] && ei_key=$(printf '%s\n' "$ei_state" | cksum)
        fi
        ei_section conda-key
        echo "$ei_key"
        ei_section conda
        if [ -z "$ei_on" ]; then
            echo @@absent@@
        elif [ -n "$ei_key" ] && [ "$ei_key" = "$ei_known_conda" ]; then
            echo @@same@@
        else
            ei_run conda list --explicit
        fi
    fi
    ei_py=
    if [ -n "$ei_venv" ]; then
        ei_venv=$(ei_home "$ei_venv")
        [ -x "$ei_venv/bin/python" ] && ei_py=$ei_venv/bin/python
    fi
    if [ -z "$ei_py" ]; then
        for ei_f in python python3; do
            if command -v "$ei_f" >/dev/null 2>&1; then
                ei_py=$(command -v "$ei_f")
                break
            fi
        done
    fi
    ei_section python
    if [ -n "$ei_py" ]; then ei_run "$ei_py" --version; echo "$ei_py"; else echo @@absent@@; fi
    ei_key=
    if [ -n "$ei_py" ]; then
        ei_state=$("$ei_py" -c 'import os, sys
for p in sys.path:
    if os.path.isdir(p): print(p, os.stat(p).st_mtime_ns)' 2>/dev/null) &&
            [ -n "$ei_state" ] && ei_key=$(printf '%s\n' "$ei_state" | cksum)
    fi
    ei_section pip-key
    echo "$ei_key"
    ei_section pip
    if [ -z "$ei_py" ]; then
        echo @@absent@@
    elif [ -n "$ei_key" ] && [ "$ei_key" = "$ei_known_pip" ]; then
        echo @@same@@
    else
        ei_run "$ei_py" -m pip freeze
    fi
    ei_section nvidia-smi
    if command -v nvidia-smi >/dev/null 2>&1; then
        if [ -n "$ei_gpus" ]; then
            ei_run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv -i "$ei_gpus"
        else
            ei_run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        fi
        ei_section nvidia-smi-header
        ei_run nvidia-smi
    else
        echo @@absent@@
    fi
    ei_section nvcc
    if command -v nvcc >/dev/null 2>&1; then ei_run nvcc --version; else echo @@absent@@; fi
    ei_section uname
    ei_run uname -a
    ei_section os-release
    for ei_f in /etc/os-release /usr/lib/os-release; do
        if [ -f "$ei_f" ]; then
            head -c 65536 -- "$ei_f"
            break
        fi
    done
    ei_section hostname
    ei_run uname -n
    return 0
}

VERB=${1:-}
[ $# -gt 0 ] && shift
case "$VERB" in
    prepare) need_args 2 $#; do_prepare "$1" "$2" ;;
    write) need_args 1 $#; do_write "$1" ;;
    launch) need_args 1 $#; do_launch "$1" ;;
    status) need_args 1 $#; do_status "$1" ;;
    log) need_args 3 $#; do_log "$1" "$2" "$3" ;;
    list) need_args 2 $#; do_list "$1" "$2" ;;
    mkdir) need_args 1 $#; mkdir -p -- "$1" ;;
    kill) need_args 2 $#; do_kill "$1" "$2" ;;
    cleanup) need_args 1 $#; do_cleanup "$1" ;;
    gpus) do_gpus "${1:-}" ;;
    envinfo) need_args 5 $#; do_envinfo "$@" ;;
    home) printf '%s\n' "$HOME" ;;
    power) need_args 1 $#; sh -c "$1" ;;
    *) die 2 "unknown verb: $VERB" ;;
esac
