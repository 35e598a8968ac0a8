#!/bin/bash
# Rendered by slurmft (restart of job 42): requeueable, resumes from
# CHECKPOINT_PATH; `slurmft run` survives a lost node, a dead or hung rank by relaunching the
# training (mpirun) on the nodes left, and hands what it cannot fix in place to
# `slurmft reschedule` (a requeue).
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
export CHECKPOINT_PATH='/shared/ckpt run1'
export SLURMFT_ORIGINAL_JOB_ID=42
exec /opt/slurmft/bin/slurmft run --checkpoint-dir "$CHECKPOINT_PATH" --resume always \
    --launcher mpirun --slots 2 --launch-from peer \
    --mpirun-args '--allow-run-as-root --mca btl self,tcp' --ssh-args '' \
    --hang-timeout auto \
    --slurmft-cmd /opt/slurmft/bin/slurmft --reschedule-log /shared/slurmft/reschedule.log \
    -- python train.py --epochs 10 --name 'run one'
