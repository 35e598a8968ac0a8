#!/bin/bash
# Rendered by slurmft (restart of job 42): requeueable, resumes from
# CHECKPOINT_PATH; it survives a lost node by relaunching the training (mpirun) on the
# nodes left, and hands what it cannot fix in place to `slurmft reschedule`.
#SBATCH --job-name=train-gpt
#SBATCH --nodes=3
#SBATCH --nodelist=node1,node2,node4
#SBATCH --exclude=node3
#SBATCH --ntasks-per-node=2
#SBATCH --requeue
#SBATCH --open-mode=append
# --no-kill: a failed node leaves the job instead of ending it; slurmft then relaunches the
# training in this same allocation (the comment tells slurmft this wrapper does that).
#SBATCH --no-kill
#SBATCH --comment=slurmft:relaunch
#SBATCH --partition=main
#SBATCH --chdir=/shared/run1
#SBATCH --output=/shared/run1/slurm-%j.out
set -u

export CHECKPOINT_PATH='/shared/ckpt run1'
mkdir -p "$CHECKPOINT_PATH"
# Restart settings (e.g. CUDA_VISIBLE_DEVICES from `slurmft inject mask-gpu`), read before
# every start and relaunch of the training.
load_restart_env() {
    if [ -f "$CHECKPOINT_PATH/.slurmft-restart.env" ]; then
        set -a
        # shellcheck source=/dev/null
        . "$CHECKPOINT_PATH/.slurmft-restart.env"
        set +a
    fi
}
load_restart_env
export SLURMFT_ORIGINAL_JOB_ID=42
resume=(--resume "$CHECKPOINT_PATH")

launcher_pid=""
relaunch_asked=0
# mpirun runs on a peer node (the first node of the job that is not this batch host),
# started there over ssh, so every step of the training reports to the peer. Were this host
# lost, the surviving nodes would otherwise wait on messages to it (Slurm's MessageTimeout,
# several times over) before the job can be requeued. Without working ssh: it runs here.
ssh_cmd=(ssh -o BatchMode=yes -o ConnectTimeout=5 -o ServerAliveInterval=5 -o ServerAliveCountMax=3)
here="${SLURMD_NODENAME:-$(hostname -s)}"
peer_ssh=1          # 0 once ssh to a peer failed: from then on the launcher runs here
checked_peer=""
# shellcheck disable=SC2317  # called below
pick_peer() {  # the first node in $nodelist other than this one, or nothing
    local n
    for n in $(scontrol show hostnames "$nodelist"); do
        if [ "$n" != "$here" ] && [[ "$n" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
            echo "$n"
            return
        fi
    done
}
# shellcheck disable=SC2317  # called below
peer_script() {  # this environment, then the launch command on the peer ($1), as bash input
    local v
    for v in $(compgen -e); do
        case "$v" in
            SSH_*|SLURMD_NODENAME|HOSTNAME|HOME|USER|LOGNAME|SHELL|SHLVL|PWD|OLDPWD|_|BASH*|TERM|DISPLAY|MAIL) continue ;;
            SHELLOPTS|UID|EUID|PPID) continue ;;   # read-only in bash
        esac
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    printf 'cd %q || exit 1\n' "$PWD"
    printf 'exec'
    # mpirun in a job step of its own, so that Slurm stops it with the job
    printf ' %q' srun --jobid="$SLURM_JOB_ID" --overlap --no-kill --nodes=1 --ntasks=1 --nodelist="$1" \
        env SLURM_JOB_NODELIST="$nodelist" SLURM_NODELIST="$nodelist" \
        SLURM_NNODES="$nodes" SLURM_JOB_NUM_NODES="$nodes" SLURM_TASKS_PER_NODE="$SLURM_TASKS_PER_NODE" \
        SLURM_NTASKS="$SLURM_NTASKS" SLURM_NPROCS="$SLURM_NPROCS"
    printf ' %q' "${@:2}"
    printf '\n'
}
# shellcheck disable=SC2317  # called below
stop_training() {  # kill the training's job steps (every step but this script's)
    local steps
    steps="$(squeue --noheader --steps --jobs "$SLURM_JOB_ID" --format %i 2>/dev/null | grep -E '^[0-9]+[.][0-9]+$')"
    if [ -n "$steps" ]; then
        # shellcheck disable=SC2086  # step ids, checked above: one word each
        scancel --signal=KILL $steps 2>/dev/null
    fi
}
# slurmft sends SIGUSR2 once it has taken a failed node out of this job: stop the launcher,
# the loop below relaunches the training on the nodes left, from the latest checkpoint.
# shellcheck disable=SC2317  # called by the trap
on_relaunch() {
    relaunch_asked=1
    if [ -n "$launcher_pid" ]; then
        kill -TERM "$launcher_pid" 2>/dev/null
    fi
}
trap on_relaunch USR2
nodelist="$SLURM_JOB_NODELIST"
while :; do
    nodes="$(scontrol show hostnames "$nodelist" | wc -l)"
    # Slurm's view of the allocation for the launcher (mpirun starts its daemons with srun on
    # the nodes it names, so Slurm tracks and cleans up every rank): after a relaunch, the
    # nodes the job has left.
    export SLURM_JOB_NODELIST="$nodelist" SLURM_NODELIST="$nodelist" \
        SLURM_JOB_NUM_NODES="$nodes" SLURM_NNODES="$nodes" \
        SLURM_TASKS_PER_NODE="2(x$nodes)" SLURM_NTASKS="$(( nodes * 2 ))" \
        SLURM_NPROCS="$(( nodes * 2 ))"
    relaunch_asked=0
    # --no-kill for its srun too: a node whose slurmd dies keeps running its ranks (slurmft
    # drains it); a node that is cut off is taken out by slurmft, which then signals USR2.
    # --overlap: a new launch need not wait for the steps of a stopped one to finish.
    # shellcheck disable=SC2054  # commas inside mpirun options (btl self,tcp) are not separators
    launch_cmd=(mpirun -np "$(( nodes * 2 ))" --mca plm_slurm_args "--no-kill --overlap"
        --allow-run-as-root --mca btl self,tcp python train.py --epochs 10 --name 'run one' "${resume[@]}")
    peer="$(pick_peer)"
    if [ -n "$peer" ] && [ "$peer_ssh" -eq 1 ] && [ "$peer" != "$checked_peer" ]; then
        # ssh works, and this directory is there too (shared storage), once per peer
        if "${ssh_cmd[@]}" "$peer" "cd $(printf %q "$PWD")" </dev/null; then
            checked_peer="$peer"
        else
            echo "slurmft: cannot ssh to $peer or no $PWD there: mpirun runs on the batch host $here" >&2
            peer_ssh=0
        fi
    fi
    if [ -n "$peer" ] && [ "$peer_ssh" -eq 1 ]; then
        peer_script "$peer" "${launch_cmd[@]}" | "${ssh_cmd[@]}" "$peer" bash -s &
    else
        "${launch_cmd[@]}" &
    fi
    launcher_pid=$!
    wait "$launcher_pid"
    rc=$?
    if [ "$relaunch_asked" -eq 1 ]; then
        # A launcher may wait for an unreachable node: give it 1 s, then kill it (its ranks
        # are stopped through Slurm below, wherever it runs).
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$launcher_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$launcher_pid" 2>/dev/null
        wait "$launcher_pid" 2>/dev/null
    fi
    launcher_pid=""
    if [ "$rc" -eq 0 ]; then
        break
    fi
    resume=(--resume "$CHECKPOINT_PATH")
    if [ "$relaunch_asked" -eq 0 ]; then
        # The launcher failed by itself (a rank died, a node vanished): slurmft probes the
        # nodes and takes the failed ones out of the job (exit 0), or says it needs a requeue.
        echo "slurmft: launcher exited with $rc in job $SLURM_JOB_ID; asking slurmft" >&2
        /opt/slurmft/bin/slurmft reschedule "$SLURM_JOB_ID" --in-place \
            --restart-count "${SLURM_RESTART_COUNT:-0}" --checkpoint-dir "$CHECKPOINT_PATH" \
            </dev/null >>/shared/slurmft/reschedule.log 2>&1
        in_place=$?
        if [ "$in_place" -eq 6 ]; then
            # Slurm requeued the job while this node was cut off: it runs elsewhere now.
            echo "slurmft: job $SLURM_JOB_ID runs elsewhere since its requeue; this copy stops" >&2
            exit "$rc"
        elif [ "$in_place" -ne 0 ]; then
            break
        fi
    fi
    # Nothing of the last launch may train on: kill its steps (a launcher that exited by
    # itself can leave some, e.g. mpirun on a peer whose node failed drives its daemons on).
    stop_training
    nodelist="$(squeue --noheader --jobs "$SLURM_JOB_ID" --format %N)"
    if [ -z "$nodelist" ]; then
        echo "slurmft: cannot read the allocation of job $SLURM_JOB_ID" >&2
        break
    fi
    echo "slurmft: relaunching the training on $nodelist in job $SLURM_JOB_ID" >&2
    load_restart_env
done

if [ "$rc" -ne 0 ]; then
    # Not recoverable inside this allocation: let slurmft check the nodes and requeue or
    # resubmit. It runs detached (setsid -f) because it requeues this very job, which ends
    # this script.
    echo "slurmft: launcher exited with $rc in job $SLURM_JOB_ID; asking slurmft to reschedule" >&2
    setsid -f /opt/slurmft/bin/slurmft reschedule "$SLURM_JOB_ID" --settle 30 --restart-failed \
        --nodes "$SLURM_JOB_NODELIST" --checkpoint-dir "$CHECKPOINT_PATH" \
        --train-cmd 'python train.py --epochs 10 --name '"'"'run one'"'"'' \
        </dev/null >>/shared/slurmft/reschedule.log 2>&1
fi
exit "$rc"
