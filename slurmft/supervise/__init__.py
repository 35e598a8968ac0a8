"""The in-job supervisor (`slurmft run`): launch, relaunch, hang detection."""
