#!/bin/bash
# Rendered by slurmft (restart of job 42): requeueable, resumes from
# CHECKPOINT_PATH; with mpirun it survives a lost node by relaunching the training on the nodes
# left, and hands what it cannot fix in place to `slurmft reschedule`.
#SBATCH --job-name=train-gpt
#SBATCH --nodes=3
#SBATCH --nodelist=node1,node2,node4
#SBATCH --exclude=node3
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --partition=main
#SBATCH --chdir=/shared/run1
#SBATCH --output=/shared/run1/slurm-%j.out
set -u

export CHECKPOINT_PATH=/shared/ckpt
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

srun --mpi=pmix --ntasks-per-node=1 python train.py "${resume[@]}"
rc=$?

if [ "$rc" -ne 0 ]; then
    # Not recoverable inside this allocation: let slurmft check the nodes and requeue or
    # resubmit. It runs detached (setsid -f) because it requeues this very job, which ends
    # this script.
    echo "slurmft: launcher exited with $rc in job $SLURM_JOB_ID; asking slurmft to reschedule" >&2
    setsid -f /opt/slurmft/bin/slurmft reschedule "$SLURM_JOB_ID" --settle 30 --restart-failed \
        --nodes "$SLURM_JOB_NODELIST" --checkpoint-dir "$CHECKPOINT_PATH" \
        --train-cmd 'python train.py' \
        </dev/null >>/shared/slurmft/reschedule.log 2>&1
fi
exit "$rc"
