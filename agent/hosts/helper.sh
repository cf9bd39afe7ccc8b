# droprun helper: passed inline on every call as
#   sh -c "$HELPER" droprun-helper VERB ARGS...
# or once per session as `sh -c "$HELPER" droprun-helper serve` (see do_serve), so nothing
# is installed on a server and versions never skew. Every argument is a separate word;
# nothing here evaluates an argument as shell code except `power`, whose command comes from
# the agent's own config, and `serve`, which evaluates only the agent's quoted words. POSIX sh and the utilities that both GNU and
# BusyBox userlands have (so the built-in local host also runs on a NAS's own firmware).
# procs.sh (run_pids, run_alive, run_going, sweep) is pasted in front of this text.
#
# A run dir belongs to exactly one run: its .droprun/run_id holds the run's id, and every
# verb that acts on a run dir checks it, so a leftover of another run is never adopted.

NL='
'

die() {  # die STATUS MESSAGE
    printf 'droprun-helper: %s\n' "$2" >&2
    exit "$1"
}

need_args() {  # need_args COUNT GIVEN
    [ "$2" -ge "$1" ] || die 2 "$VERB needs $1 argument(s)"
}

get() {  # get FILE: the first line of FILE in $got ("" if it has none): read, not cat,
    # as every process counts when many short runs start and end
    got=
    { { IFS= read -r got || :; } <"$1"; } 2>/dev/null
    return 0
}

read_pid() {  # read_pid RUNDIR: the launcher's pid in $pid, or ""
    get "$1/.droprun/pid"
    pid=$got
}

owned() {  # owned RUNDIR ID: true if RUNDIR is the run dir of run ID
    [ -f "$1/.droprun/run_id" ] && get "$1/.droprun/run_id" && [ "$got" = "$2" ]
}

require_owned() {  # require_owned RUNDIR ID: fail unless RUNDIR is missing or run ID's
    [ ! -d "$1" ] || owned "$1" "$2" ||
        die 5 "$1 belongs to another run (its id is not $2); leaving it alone"
}

need() {  # need TOOL...: fail naming the first tool this host lacks
    for nd_tool in "$@"; do
        command -v "$nd_tool" >/dev/null 2>&1 ||
            die 6 "$nd_tool is not installed on this host (droprun needs: $*)"
    done
}

do_prepare() {  # prepare CACHE RUNDIR ID: make run ID's dir from the cache (hard links)
    cache=$1 run=$2 id=$3
    [ -d "$cache" ] || die 3 "cache $cache does not exist"
    aside=
    if [ -d "$run" ]; then
        if owned "$run" "$id"; then
            echo exists
            return 0
        fi
        # Another run's dir under this name (a leftover, a restored share): keep it aside,
        # never delete it, never kill what may still run in it.
        aside="$run.orphan-$(date +%Y%m%d-%H%M%S)"
        [ ! -e "$aside" ] || aside="$aside-$$"
        mv -- "$run" "$aside" || die 3 "cannot move $run aside to $aside"
    fi
    tmp="$run.preparing"
    if [ -e "$tmp" ] || [ -L "$tmp" ]; then rm -rf -- "$tmp"; fi
    [ -d "${run%/*}" ] || mkdir -p -- "${run%/*}" || die 3 "cannot create the parent of $run"
    if ! cp -al -- "$cache" "$tmp" 2>/dev/null; then
        rm -rf -- "$tmp"
        cp -a -- "$cache" "$tmp" || die 3 "cannot copy $cache to $tmp"
    fi
    mkdir -p -- "$tmp/.droprun" || die 3 "cannot create $tmp/.droprun"
    printf '%s\n' "$id" >"$tmp/.droprun/run_id" || die 3 "cannot write $tmp/.droprun/run_id"
    mv -- "$tmp" "$run" || die 3 "cannot rename $tmp to $run"
    if [ -n "$aside" ]; then
        printf 'moved\n%s' "$aside"
    else
        echo created
    fi
}

do_write() {  # write FILE: stdin to FILE, atomically
    tmp="$1.tmp.$$"
    cat >"$tmp" || { rm -f -- "$tmp"; die 3 "cannot write $1"; }
    mv -f -- "$tmp" "$1" || die 3 "cannot rename $tmp to $1"
}

do_launch() {  # launch RUNDIR ID [SCRIPT]: write SCRIPT (or stdin) to
    # .droprun/launch.sh, start it once, detached; print "PID START"
    cd -- "$1" || die 3 "run dir $1 does not exist"
    require_owned . "$2"
    [ -d .droprun ] || die 3 "$1/.droprun does not exist"
    if [ ! -d .droprun/launched ]; then
        need setsid env grep date sleep mv
        # Written in place: nothing runs it before .droprun/launched is made below.
        if [ $# -ge 3 ]; then
            printf '%s' "$3" >.droprun/launch.sh || die 3 "cannot write $1/.droprun/launch.sh"
        else
            cat >.droprun/launch.sh || die 3 "cannot write $1/.droprun/launch.sh"
        fi
    fi
    if mkdir .droprun/launched 2>/dev/null; then
        if command -v bash >/dev/null 2>&1; then shell=bash; else shell=sh; fi
        start=$(date +%s)
        printf '%s\n' "$start" >.droprun/start
        # The id in the environment tags every process of the run, also those that leave
        # its process group. No nohup: setsid leaves no terminal to hang up. setsid execs
        # the shell (a background child of a shell without job control leads no group), so
        # $! is the launcher, which records its pid again itself.
        { DROPRUN_RUN_ID=$2 setsid "$shell" .droprun/launch.sh >.droprun/log 2>&1 </dev/null & }
        printf '%s\n' "$!" >.droprun/pid
        printf '%s %s\n' "$!" "$start"
        return 0
    fi
    waited=0
    while [ ! -s .droprun/pid ]; do
        [ "$waited" -lt 1000 ] || die 4 "launched, but no pid was recorded within 20 s"
        # The launcher writes its pid within milliseconds: poll finely (whole
        # seconds where sleep takes no fractions, which also ends the loop in time).
        sleep 0.02 2>/dev/null || { sleep 1; waited=$((waited + 49)); }
        waited=$((waited + 1))
    done
    get .droprun/pid
    la_pid=$got
    get .droprun/start
    printf '%s %s\n' "$la_pid" "${got:--}"
}

do_status() {  # status RUNDIR ID: "STATE PID EXIT TIMED_OUT END START" ("-": unknown)
    d="$1/.droprun"
    if [ ! -d "$1" ]; then
        echo "not_started - - 0 - -"
        return 0
    fi
    require_owned "$1" "$2"
    if [ ! -d "$d/launched" ]; then
        echo "not_started - - 0 - -"
        return 0
    fi
    read_pid "$1"
    get "$d/start"
    start=$got
    timed_out=0
    [ ! -f "$d/timed_out" ] || timed_out=1
    if [ ! -f "$d/exit" ] && run_going "$2" "$pid"; then
        echo "running ${pid:--} - $timed_out - ${start:--}"
    elif [ -f "$d/exit" ]; then  # checked again: the launcher may have just finished
        get "$d/end"
        end=$got
        get "$d/exit"
        echo "exited ${pid:--} $got $timed_out ${end:--} ${start:--}"
    else
        echo "vanished ${pid:--} - $timed_out - ${start:--}"
    fi
}

do_log() {  # log RUNDIR ID OFFSET LIMIT: print LIMIT bytes of the log from OFFSET
    require_owned "$1" "$2"
    [ -s "$1/.droprun/log" ] || return 0
    if [ "$3" -eq 0 ]; then
        head -c "$4" -- "$1/.droprun/log"
    else
        tail -c +"$(($3 + 1))" -- "$1/.droprun/log" | head -c "$4"
    fi
}

do_poll() {  # poll RUNDIR ID OFFSET LIMIT: the status line, then LIMIT bytes of the log
    # from OFFSET: what the agent asks on every turn of its watch, in one call
    po_status=$(do_status "$1" "$2") || exit $?
    printf '%s\n' "$po_status"
    do_log "$1" "$2" "$3" "$4"
}

do_stop() {  # stop RUNDIR ID GRACE OFFSET LIMIT: kill what is left of a started run (see
    # kill); print its status after that, then LIMIT bytes of the log from OFFSET
    so_status=$(do_status "$1" "$2") || exit $?
    case $so_status in
        not_started*) ;;
        exited*) ;;  # the launcher ended every process of the run before it wrote exit
        *)
            do_kill "$1" "$2" "$3"
            case $so_status in running*) so_status=$(do_status "$1" "$2") || exit $? ;; esac
            ;;
    esac
    printf '%s\n' "$so_status"
    do_log "$1" "$2" "$4" "$5"
}

gnu_find() {  # gnu_find: true if find has -printf (GNU), false for BusyBox's (asked once)
    [ -n "${gnu_find_has:-}" ] || {
        if find . -maxdepth 0 -printf '' 2>/dev/null; then gnu_find_has=1; else gnu_find_has=0; fi
    }
    [ "$gnu_find_has" = 1 ]
}

list_files() {  # list_files: "TYPE\0PATH\0SIZE\0MTIME\0" for each file and link under .
    if gnu_find; then
        find . \( -type f -o -type l \) -printf '%y\0%P\0%s\0%T@\0'
        return 0
    fi
    # BusyBox find has no -printf: stat each file (%y carries the nanoseconds).
    find . \( -type f -o -type l \) -exec sh -c '
        for f; do
            s=$(stat -c "%s %Y %y" -- "$f") || continue
            set -- $s
            case $4 in *.*) ns=${4#*.} ;; *) ns=0 ;; esac
            if [ -L "$f" ]; then t=l; else t=f; fi
            printf "%s\0%s\0%s\0%s\0" "$t" "${f#./}" "$1" "$2.$ns"
        done' droprun-list {} +
}

list_writing() {  # list_writing: "w\0PATH\0-\0-\0" per file a process has open for
    # writing (the mode of a /proc/PID/fd link says how the file was opened); without
    # /proc, nothing
    if gnu_find; then
        find /proc/[0-9]*/fd -maxdepth 1 -type l -perm -200 -lname '/*' \
            -printf 'w\0%l\0-\0-\0' 2>/dev/null || true
        return 0
    fi
    # No -lname/-printf (BusyBox): ls -l shows each link's mode and target, read in one loop.
    ls -l /proc/[0-9]*/fd 2>/dev/null | while IFS= read -r fd_line; do
        case $fd_line in l?w*" -> /"*) printf 'w\0%s\0-\0-\0' "${fd_line#* -> }" ;; esac
    done
}

do_list() {  # list RUNDIR ID DIR [ended]: "NOW ALIVE\n", then list_files of DIR, then
    # "d\0PHYSICAL-DIR\0-\0-\0", then list_writing while the run is alive (the files
    # open for writing matter only then); "ended": the caller stopped the run, no look
    require_owned "$1" "$2"
    alive=0
    if [ "${4:-}" != ended ]; then
        read_pid "$1"
        ! run_going "$2" "$pid" || alive=1
    fi
    now=$(date +%s.%N)
    case $now in *N*) now=$(date +%s) ;; esac  # BusyBox date has no %N
    echo "$now $alive"
    [ -d "$3" ] || return 0
    cd -- "$3" || die 3 "cannot enter $3"
    list_files
    printf 'd\0%s\0-\0-\0' "$(pwd -P)"
    [ "$alive" = 0 ] || list_writing
}

do_kill() {  # kill RUNDIR ID GRACE: TERM every process of the run, KILL after GRACE s
    pid=
    if [ -d "$1" ]; then
        require_owned "$1" "$2"
        read_pid "$1"
    fi
    # The launcher is spared at first: once the script and its children are gone it records
    # how the script ended, however long that takes on a busy host. Then whatever is left,
    # a stuck launcher included, is killed.
    sweep "$2" "$pid" "$3" "$pid" || die 4 "processes of run $2 survived KILL"
    waited=0
    while [ -n "$pid" ] && [ "$waited" -lt 50 ] && run_going "$2" "$pid"; do
        pause
        waited=$((waited + 1))
    done
    sweep "$2" "$pid" 0 "" || die 4 "processes of run $2 survived KILL"
}

do_cleanup() {  # cleanup RUNDIR ID: remove run ID's dir (never anything else)
    case "${1##*/}" in
        run_[0-9]*) ;;
        *) die 2 "refusing to remove $1: not a run dir" ;;
    esac
    require_owned "$1" "$2"
    rm -rf -- "$1" "$1.preparing"
}

do_orphans() {  # orphans BASE: "PATH\0ID\0START\0KB\0ALIVE\0" for each run dir in BASE/*/
    for od in "$1"/*/run_[0-9]*; do
        [ -d "$od" ] || continue
        case $od in *.preparing) continue ;; esac
        get "$od/.droprun/run_id"
        oid=$got
        get "$od/.droprun/start"
        ostart=${got:-$(stat -c %Y -- "$od")}
        okb=$(du -sk -- "$od" 2>/dev/null | cut -f1)
        oalive=0
        read_pid "$od"
        [ -z "$oid" ] || ! run_going "$oid" "$pid" || oalive=1
        printf '%s\0%s\0%s\0%s\0%s\0' "$od" "${oid:--}" "${ostart:--}" "${okb:-0}" "$oalive"
    done
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

ei_where() {  # ei_where: the boot, and where each tool envinfo runs resolves on PATH
    { IFS= read -r ei_boot </proc/sys/kernel/random/boot_id; } 2>/dev/null || ei_boot=-
    printf 'boot %s\n' "$ei_boot"
    for ei_t in python python3 conda nvcc nvidia-smi; do
        printf '%s ' "$ei_t"
        command -v "$ei_t" || echo -
    done
}

ei_stat() {  # ei_stat PATH...: "PATH INODE SIZE MTIME" for each path that exists
    [ $# -eq 0 ] || stat -c '%n %i %s %y' -- "$@" 2>/dev/null
    return 0
}

do_envstamp() {  # envstamp PATH...: the stamp of an earlier envinfo, whose "stamp-paths"
    # are PATH...: equal stamps mean nothing envinfo looks at has changed since
    ei_where
    ei_stat "$@"
}

do_envinfo() {  # envinfo CONDA_ENV VENV GPUS PIP_KEY CONDA_KEY CONDA_SH...: the run's
    # environment, in sections. pip freeze and conda list take seconds: they print
    # "@@same@@" instead while their key (the state of the package folders) equals the one
    # given, which the caller got from an earlier call. The "stamp" section (see envstamp)
    # is taken before the package lists: a change while they are listed shows as a change.
    ei_conda=$1 ei_venv=$2 ei_gpus=$3 ei_known_pip=$4 ei_known_conda=$5
    shift 5
    ei_where=$(ei_where)
    ei_paths=
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
            ei_paths=${CONDA_PREFIX:-/nonexistent}/conda-meta
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
    # One start of python for its version and the key (a start can take 0.1 s or more).
    ei_state=
    if [ -n "$ei_py" ]; then
        ei_state=$(ei_run "$ei_py" -c 'import os, sys
print("Python " + sys.version.split()[0])
for p in sys.path:
    if os.path.isdir(p): print(p, os.stat(p).st_mtime_ns)')
    fi
    # The stamp's paths: the interpreter, its package folders (sys.path, as python listed
    # them, one "DIR MTIME" per line), nvcc and the conda env's records.
    ei_paths=$ei_paths$NL$ei_py
    if command -v nvcc >/dev/null 2>&1; then ei_paths=$ei_paths$NL$(command -v nvcc); fi
    ei_ifs=$IFS
    IFS=$NL
    set -f
    case $ei_state in
        *"$NL"*)
            for ei_line in ${ei_state#*"$NL"}; do ei_paths=$ei_paths$NL${ei_line% *}; done
            ;;
    esac
    # shellcheck disable=SC2086 # one path per line
    set -- $ei_paths
    set +f
    IFS=$ei_ifs
    ei_section stamp-paths
    printf '%s\n' "$@"
    ei_section stamp
    printf '%s\n%s\n' "$ei_where" "$(ei_stat "$@")"
    ei_section python
    if [ -z "$ei_py" ]; then
        echo @@absent@@
    elif [ "$ei_state" = @@absent@@ ]; then  # a python that runs no code: its version still
        ei_run "$ei_py" --version
        echo "$ei_py"
    else
        printf '%s\n%s\n' "${ei_state%%"$NL"*}" "$ei_py"
    fi
    ei_key=
    case $ei_state in
        *"$NL"*) ei_key=$(printf '%s\n' "${ei_state#*"$NL"}" | cksum) ;;
    esac
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

do_serve() {  # serve: run verbs until stdin ends. The first line is the marker; then
    # one verb per line, as the agent's shell-quoted words (a newline in a word written as
    # "$NL"). Each verb runs in a subshell, its stdin empty, its stdout passed on; then
    # "\nMARK STATUS\n", the verb's stderr if it failed, and "\nMARK.\n". A session saves
    # a start of sh and a parse of this text per verb, and over ssh a channel.
    IFS= read -r sv_mark || return 0
    # mktemp (O_EXCL, mode 0600): a name in a shared /tmp made up here could be a link
    # another user put there.
    sv_err=$(mktemp 2>/dev/null) || sv_err=/dev/null
    trap '[ "$sv_err" = /dev/null ] || rm -f -- "$sv_err"' EXIT
    trap 'exit 1' HUP TERM  # a closed channel or a stop: the file still goes
    while IFS= read -r sv_line; do
        eval "set -- $sv_line"
        (dispatch "$@") </dev/null 2>"$sv_err" && sv_st=0 || sv_st=$?
        printf '\n%s %s\n' "$sv_mark" "$sv_st"
        [ "$sv_st" -eq 0 ] || cat -- "$sv_err" 2>/dev/null
        printf '\n%s.\n' "$sv_mark"
    done
}

dispatch() {  # dispatch VERB ARGS...: run one verb
    VERB=${1:-}
    [ $# -gt 0 ] && shift
    case "$VERB" in
        prepare) need_args 3 $#; do_prepare "$1" "$2" "$3" ;;
        write) need_args 1 $#; do_write "$1" ;;
        launch) need_args 2 $#; do_launch "$@" ;;
        status) need_args 2 $#; do_status "$1" "$2" ;;
        log) need_args 4 $#; do_log "$1" "$2" "$3" "$4" ;;
        poll) need_args 4 $#; do_poll "$1" "$2" "$3" "$4" ;;
        stop) need_args 5 $#; do_stop "$1" "$2" "$3" "$4" "$5" ;;
        list) need_args 3 $#; do_list "$1" "$2" "$3" "${4:-}" ;;
        mkdir) need_args 1 $#; mkdir -p -- "$1" ;;
        kill) need_args 3 $#; do_kill "$1" "$2" "$3" ;;
        cleanup) need_args 2 $#; do_cleanup "$1" "$2" ;;
        orphans) need_args 1 $#; do_orphans "$1" ;;
        gpus) do_gpus "${1:-}" ;;
        envinfo) need_args 5 $#; do_envinfo "$@" ;;
        envstamp) do_envstamp "$@" ;;
        home) printf '%s\n' "$HOME" ;;
        rsync-version) rsync --version ;;
        power) need_args 1 $#; sh -c "$1" ;;
        serve) do_serve ;;
        *)  # a kind's own verbs (verb_NAME), pasted in front of this text by its host class
            command -v "verb_$VERB" >/dev/null 2>&1 || die 2 "unknown verb: $VERB"
            "verb_$VERB" "$@" ;;
    esac
}

dispatch "$@"
