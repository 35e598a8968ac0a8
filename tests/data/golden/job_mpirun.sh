#!/bin/bash
# Rendered by slurmft (job wrapper): requeueable, resumes from
# CHECKPOINT_PATH; `slurmft run` survives a lost node, a dead or hung rank by relaunching the
# training (mpirun) on the nodes left, and hands what it cannot fix in place to
# `slurmft reschedule` (a requeue).
#SBATCH --job-name=train_gpt
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --open-mode=append
# --no-kill: a failed node leaves the job instead of ending it; slurmft then relaunches the
# training in this same allocation (the comment tells slurmft this wrapper does that).
#SBATCH --no-kill
#SBATCH --comment=slurmft:relaunch
#SBATCH --partition=main
#SBATCH --time=01:00:00
export CHECKPOINT_PATH=/shared/ck
exec /opt/slurmft/bin/slurmft run --checkpoint-dir "$CHECKPOINT_PATH" --resume auto \
    --launcher mpirun --slots 1 --launch-from peer \
    --mpirun-args --allow-run-as-root --ssh-args '' \
    --hang-timeout auto \
    --slurmft-cmd /opt/slurmft/bin/slurmft --reschedule-log /shared/slurmft/reschedule.log \
    -- python train.py --steps 1000
