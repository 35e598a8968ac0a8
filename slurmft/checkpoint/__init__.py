"""Training-side checkpointing: policy, atomic verified saves, async upload, resume.

Light on purpose: importing this package pulls in neither torch nor mpi4py (see torch.py,
mpi.py, keras.py), nor anything from slurm/ or probe/.
"""

from slurmft.checkpoint.manager import CheckpointManager, SaveHandle
from slurmft.checkpoint.manifest import CheckpointInfo
from slurmft.checkpoint.policy import CheckpointPolicy

__all__ = ["CheckpointManager", "CheckpointPolicy", "CheckpointInfo", "SaveHandle"]
