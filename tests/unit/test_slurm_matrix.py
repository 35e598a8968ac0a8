"""The Slurm matrix report (tests/integration/slurm_matrix.py): the backend x release table
and the README section it writes, from results as the run records them."""

from __future__ import annotations

import pytest

from tests.integration import slurm_matrix as sm


def result(release, rc=0, tests=None, version=""):
    return {"release": release, "returncode": rc, "version": version,
            "tests": tests or {"test_a": "passed", "test_b": "passed"}, "seconds": 1.0}


def test_the_backend_table_says_what_was_tested_on_each_release():
    rest = result("22.05", tests={"test_x": "passed", "test_y": "failed"}, rc=1)
    text = sm.backend_table([result("22.05", version="22.05.8"), result("26.05")], rest)
    cli, rest_row = text.splitlines()[2:4]
    assert cli.count("passed: 2 of 2 tests") == 2
    assert "FAILED (rc=1): 1 of 2 tests" in rest_row
    assert "not supported" in rest_row.split("|")[3]          # 26.05
    assert "22.05 (22.05.8)" in text.splitlines()[0]
    assert "supported, not run" in sm.backend_table([result("22.05")], None)


def test_the_readme_section_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{sm.README_START}\nold table\n{sm.README_END}\nafter\n")
    sm.write_readme(readme, "new table")
    assert readme.read_text() == f"intro\n{sm.README_START}\nnew table\n{sm.README_END}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- slurm-matrix:start -->"):
        sm.write_readme(readme, "x")
