#!/bin/bash
# Rendered by slurmft (job wrapper): requeueable, resumes from
# CHECKPOINT_PATH, and hands a node failure to `slurmft reschedule`.
#SBATCH --job-name=train_gpt
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --partition=main
#SBATCH --time=01:00:00
set -u

export CHECKPOINT_PATH=/shared/ck
mkdir -p "$CHECKPOINT_PATH"
# Restart settings (e.g. CUDA_VISIBLE_DEVICES from `slurmft inject mask-gpu`).
if [ -f "$CHECKPOINT_PATH/.slurmft-restart.env" ]; then
    set -a
    # shellcheck source=/dev/null
    . "$CHECKPOINT_PATH/.slurmft-restart.env"
    set +a
fi
# Resume when a checkpoint exists (a requeued or restarted run).
resume=()
if [ -n "$(ls -A "$CHECKPOINT_PATH" 2>/dev/null)" ]; then
    resume=(--resume "$CHECKPOINT_PATH")
fi

hostfile="$(mktemp "${TMPDIR:-/tmp}/slurmft-hosts.XXXXXX")"
trap 'rm -f "$hostfile"' EXIT
scontrol show hostnames "$SLURM_JOB_NODELIST" | while read -r host; do
    printf '%s slots=%d\n' "$host" 1
done > "$hostfile"
# Inside sbatch, force the hostfile: plain mpirun would take the allocation from Slurm.
mpirun -np "$(( SLURM_JOB_NUM_NODES * 1 ))" --hostfile "$hostfile" \
    --mca plm rsh --mca ras '^slurm' --allow-run-as-root \
    python train.py --steps 1000 "${resume[@]}"
rc=$?

if [ "$rc" -ne 0 ]; then
    # A rank or node failed: let slurmft check the nodes and reschedule. It runs detached
    # (setsid -f) because it requeues this very job, which ends this script.
    echo "slurmft: launcher exited with $rc in job $SLURM_JOB_ID; asking slurmft to reschedule" >&2
    setsid -f /opt/slurmft/bin/slurmft reschedule "$SLURM_JOB_ID" --settle 30 --restart-failed \
        --nodes "$SLURM_JOB_NODELIST" --checkpoint-dir "$CHECKPOINT_PATH" \
        --train-cmd 'python train.py --steps 1000' \
        </dev/null >>/shared/slurmft/reschedule.log 2>&1
fi
exit "$rc"
