# droprun: the helper verbs of slurm hosts, pasted in front of helper.sh (whose die,
# require_owned and dispatch they use) and run on the cluster's login node.

verb_submit() {  # submit RUNDIR ID NAME USER OPTION...: sbatch run ID's job once; print its id
    need_args 5 $#
    cd -- "$1" || die 3 "run dir $1 does not exist"
    require_owned . "$2"
    sb_id=$2 sb_name=$3 sb_user=$4
    shift 4
    if [ -s .droprun/job_id ]; then
        cat .droprun/job_id
        return 0
    fi
    if [ -d .droprun/launched ]; then
        # A submission began before and its answer was lost (the agent stopped, the
        # connection broke): the job, if there is one, carries the run's id as comment.
        sb_list=$(squeue --noheader --states=all --user="$sb_user" --name="$sb_name" \
            --format='%i %k' 2>&1) || die 9 "squeue failed: $sb_list"
        sb_job=$(printf '%s\n' "$sb_list" | while read -r sb_j sb_c; do
            [ "$sb_c" != "$sb_id" ] || echo "$sb_j"
        done | head -n 1)
        if [ -n "$sb_job" ]; then
            printf '%s\n' "$sb_job" >.droprun/job_id.tmp && mv -f .droprun/job_id.tmp .droprun/job_id
            echo "$sb_job"
            return 0
        fi
    fi
    mkdir -p .droprun/launched || die 3 "cannot create $1/.droprun/launched"
    if ! sb_out=$(sbatch "$@" 2>.droprun/sbatch.err); then
        die 7 "$(cat .droprun/sbatch.err)"
    fi
    sb_job=$(printf '%s\n' "$sb_out" | tail -n 1)
    sb_job=${sb_job%%;*}  # --parsable prints "ID" or "ID;CLUSTER"
    case $sb_job in
        '' | *[!0-9_]*) die 7 "sbatch gave no job id: $sb_out $(cat .droprun/sbatch.err)" ;;
    esac
    printf '%s\n' "$sb_job" >.droprun/job_id.tmp && mv -f .droprun/job_id.tmp .droprun/job_id
    echo "$sb_job"
}

verb_files() {  # files RUNDIR ID: what the launcher recorded, as status prints it, then a
    # line with the GPU ids that Slurm gave the job ("-": not known yet)
    if [ ! -d "$1" ]; then
        printf 'not_started - - 0 - -\n-\n'
        return 0
    fi
    require_owned "$1" "$2"
    d="$1/.droprun"
    if [ ! -d "$d/launched" ]; then
        printf 'not_started - - 0 - -\n-\n'
        return 0
    fi
    timed_out=0
    [ ! -f "$d/timed_out" ] || timed_out=1
    start=$(cat -- "$d/start" 2>/dev/null)
    if [ -f "$d/exit" ]; then
        end=$(cat -- "$d/end" 2>/dev/null)
        echo "exited - $(cat -- "$d/exit") $timed_out ${end:--} ${start:--}"
    else
        echo "vanished - - $timed_out - ${start:--}"
    fi
    if [ -f "$d/job_gpus" ]; then printf '=%s\n' "$(cat -- "$d/job_gpus")"; else echo -; fi
}
