"""slurmft started from a working directory that holds a folder named slurmft (a job whose
--chdir is the shared folder with slurmft's state dir) still imports the real package."""

import subprocess
import sys

from slurmft.core.selfcmd import slurmft_argv


def test_a_slurmft_folder_in_the_working_directory_does_not_shadow_the_package(tmp_path):
    (tmp_path / "slurmft" / "jobs").mkdir(parents=True)          # a state dir, as in a job
    ok = subprocess.run([*slurmft_argv(), "--version"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0 and "slurmft" in ok.stdout, ok.stderr
    plain = subprocess.run([sys.executable, "-m", "slurmft", "--version"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0          # what the job wrapper ran into without -P
