"""One error hierarchy for slurmft.

Every error carries a message written for the user: what went wrong and what to do.
The CLI maps any SlurmFTError to ``slurmft: <message>`` and ``exit_code``.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Every exit code of the ``slurmft`` command (README: "Exit codes")."""

    OK = 0
    FAILED = 1          # the operation failed (Slurm, a file, a corrupt checkpoint)
    USAGE = 2           # bad input: options, arguments, configuration
    POLICY = 3          # the restart policy refused (retry budget, too few nodes)
    NOT_YOURS = 4       # the job belongs to someone else
    NEEDS_REQUEUE = 5   # reschedule --in-place: not relaunched in place, the job needs a requeue
    STALE_COPY = 6      # reschedule --in-place: the caller is a copy Slurm has requeued since
    UNHEALTHY = 10      # probe: at least one host is not healthy
    INTERRUPTED = 130   # SIGINT / Ctrl-C


class SlurmFTError(Exception):
    """Root of all slurmft errors."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(SlurmFTError):
    """Bad input from the user (host names, job ids, options)."""

    exit_code = ExitCode.USAGE


class ConfigError(SlurmFTError):
    """A configuration value is missing or invalid."""

    exit_code = ExitCode.USAGE


class HostNameError(UsageError):
    """A host name or hostlist expression is malformed."""


class SlurmCommandError(SlurmFTError):
    """A Slurm command failed; ``slurm_message`` is Slurm's own text."""

    def __init__(self, message: str, *, argv: list[str] | None = None,
                 returncode: int | None = None, slurm_message: str = "") -> None:
        super().__init__(message)
        self.argv = list(argv or [])
        self.returncode = returncode
        self.slurm_message = slurm_message


class RestAuthError(SlurmCommandError):
    """slurmrestd or slurmctld refused the token (missing, invalid, expired, other user)."""


class RestUnsupportedError(SlurmCommandError):
    """slurmrestd's API cannot do this operation (and no CLI fallback is configured)."""


class InvalidJobError(SlurmCommandError):
    """Slurm does not know the job id."""


class JobStateError(SlurmCommandError):
    """The job is in a state where Slurm refuses the operation."""


class JobNotPendingError(JobStateError):
    """The update applies only to pending jobs (the job runs or has finished)."""


class JobPendingError(JobStateError):
    """The operation needs a started job, but the job is pending (e.g. requeue)."""


class RequeueDisabledError(JobStateError):
    """Slurm will not requeue this job (``--no-requeue`` or requeue disabled)."""


class InvalidNodeError(SlurmCommandError):
    """Slurm does not know the node name."""


class NodeStateError(SlurmCommandError):
    """Slurm refuses the node state change (e.g. resume of an idle node, drain without reason)."""


class UnsatisfiableRequestError(SlurmCommandError):
    """Slurm cannot satisfy the request (node configuration not available, unsupported field)."""


class SlurmBusyError(SlurmCommandError):
    """Slurm asks to try the same request again shortly (e.g. a job's accounting record is
    being set right after a requeue: "the DB index is being set, try again in a bit")."""


class ControllerUnreachableError(SlurmCommandError):
    """slurmctld did not answer."""


class SlurmParseError(SlurmFTError):
    """Slurm's output could not be understood."""


class ProbeError(SlurmFTError):
    """A probe could not be set up (not: a host is unhealthy)."""


class PolicyError(SlurmFTError):
    """The restart policy refuses to act (e.g. retry budget spent). ``report``: what the
    rescheduler decided and did before refusing (a hold, drained nodes), when it got that far."""

    exit_code = ExitCode.POLICY

    def __init__(self, message: str, *, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class RenderError(SlurmFTError):
    """A template could not be rendered."""


class CheckpointError(SlurmFTError):
    """A checkpoint is missing, corrupt, or could not be written."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint failed verification."""


class FencedError(CheckpointError):
    """A newer run claimed the checkpoint directory: this one must stop writing (and exit)."""


class DestinationLostError(CheckpointError):
    """The shared checkpoint destination vanished or is another file system (a lost mount)."""


class ClusterError(SlurmFTError):
    """The local test cluster could not be built, used or torn down."""


class PermissionDeniedError(SlurmFTError):
    """The caller may not act on this object."""

    exit_code = ExitCode.NOT_YOURS


class PruneError(CheckpointError):
    """Prune deleted some checkpoints but could not delete others.

    ``deleted``: names removed; ``failed``: name -> why it could not be removed (each
    checkpoint is removed whole or not at all)."""

    def __init__(self, message: str, *, deleted: list[str] | None = None,
                 failed: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.deleted = list(deleted or [])
        self.failed = dict(failed or {})
