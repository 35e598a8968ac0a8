"""The restart env file: KEY=VALUE settings the in-job supervisor applies before every start
and relaunch of the training (``$CHECKPOINT_PATH/.slurmft-restart.env``; ``slurmft inject
mask-gpu`` writes CUDA_VISIBLE_DEVICES there). One writer and one reader, here.

The format is POSIX sh with shell-quoted values, so a person can source it by hand; slurmft
parses it without a shell (``shlex``), and ignores lines that are not ``KEY=VALUE``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from slurmft.core.errors import SlurmFTError

#: Its name inside the checkpoint directory.
RESTART_ENV = ".slurmft-restart.env"
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_env_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines of a restart env file ({} if it does not exist)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SlurmFTError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    env = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and _ENV_KEY_RE.match(key):
            try:
                words = shlex.split(value)
            except ValueError:
                raise SlurmFTError(f"{path}: cannot parse the value of {key}") from None
            env[key] = words[0] if words else ""
    return env


def format_env_file(env: dict[str, str], comment: str = "") -> str:
    """The file's text: an optional comment line, then ``KEY=<shell-quoted value>`` lines."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"
