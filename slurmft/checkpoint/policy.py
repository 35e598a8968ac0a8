"""When and how to checkpoint: the ``checkpoint:`` section of the config, and where it comes from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurmft.core.config import CheckpointConfig, build_section, env_layer, read_yaml
from slurmft.core.errors import ConfigError

DEFAULT_ROOT = "/tmp/slurmft-checkpoints"


@dataclass
class CheckpointPolicy(CheckpointConfig):
    """When and how to checkpoint. Every field is validated at construction.

    The fields and their checks are the ``checkpoint:`` section of slurmft's one config schema
    (slurmft.core.config.CheckpointConfig); this class adds where they come from and the path.
    YAML (``checkpoint:`` section or a bare mapping), a dict, or the environment
    (``SLURMFT_CHECKPOINT_<FIELD>``, plus ``CHECKPOINT_PATH`` for ``path``).
    """

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CheckpointPolicy":
        return build_section(cls, "checkpoint", values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, env: Mapping[str, str] | None = None,
                  ) -> "CheckpointPolicy":
        data = read_yaml(path)
        section = data.get("checkpoint", data)
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: checkpoint section must be a mapping")
        return cls.from_env(env, base=section)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 base: Mapping[str, Any] | None = None) -> "CheckpointPolicy":
        """``base`` (e.g. from YAML), overridden by SLURMFT_CHECKPOINT_* and CHECKPOINT_PATH."""
        env = os.environ if env is None else env
        values = {**(base or {}), **env_layer("checkpoint", cls, env)}
        if env.get("CHECKPOINT_PATH"):
            values["path"] = env["CHECKPOINT_PATH"]
        return cls.from_dict(values)

    def resolve_path(self, env: Mapping[str, str] | None = None) -> str:
        """``path``, else CHECKPOINT_PATH, else ``$SLURMFT_CHECKPOINT_ROOT/$USER/$SLURM_JOB_ID``."""
        env = os.environ if env is None else env
        if self.path:
            return self.path
        if env.get("CHECKPOINT_PATH"):
            return env["CHECKPOINT_PATH"]
        root = env.get("SLURMFT_CHECKPOINT_ROOT") or DEFAULT_ROOT
        return str(Path(root) / (env.get("USER") or "nobody") / (env.get("SLURM_JOB_ID") or "local"))
