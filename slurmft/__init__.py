"""slurmft: keep long distributed training jobs alive on Slurm/MPI clusters."""

__version__ = "0.1.0"
