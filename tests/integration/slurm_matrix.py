"""Run the docker-cluster integration suite against every Slurm release and write the result
as a table (release x test): ``make test-slurm-matrix``, or

    python -m tests.integration.slurm_matrix [--releases 22.05,24.11,26.05] [--out build/slurm-matrix]

Each release runs ``tests/integration/test_docker_cluster.py`` in its own pytest process on its
own cluster (``sft-dm<release>``, the image of that release's Debian suite, built once and
reused) with ``SLURMFT_DOCKER_TEST_SLURM=<release>``. Written by the run, never by hand:
``OUT.md`` (the table, with the Slurm version each cluster reported), ``OUT.json`` and each
release's JUnit XML ``OUT-<release>.xml``. Exit status 0 only when every release passed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = "tests/integration/test_docker_cluster.py"
RELEASES = ("22.05", "24.11", "26.05")
#: The slurmrestd backend's suite (its own netns cluster: Debian's 22.05) and the releases
#: whose slurmrestd API it speaks (OpenAPI v0.0.38); later ones serve other APIs.
REST_SUITE = "tests/integration/test_slurmrestd.py"
REST_RELEASES = ("22.05",)
#: Where --readme writes the tables.
README_START, README_END = "<!-- slurm-matrix:start -->", "<!-- slurm-matrix:end -->"
MARK = {"passed": "pass", "failed": "FAIL", "error": "ERROR", "skipped": "skip"}


def junit_results(path: Path) -> dict[str, str]:
    """{test name: passed|failed|error|skipped} from a JUnit XML file ({} if missing)."""
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                break
        out[case.get("name", "?")] = outcome
    return out


def slurm_version(stdout: str) -> str:
    """The version the suite's cluster reported (its fixture prints SLURM_MATRIX_VERSION=)."""
    for line in stdout.splitlines():
        if line.startswith("SLURM_MATRIX_VERSION="):
            return line.split("=", 1)[1].strip()
    return ""


def run_release(release: str, out: Path, extra: list[str], suite: str = SUITE,
                tag: str = "") -> dict:
    xml = out.parent / f"{out.name}-{tag or release}.xml"
    env = dict(os.environ, SLURMFT_DOCKER_TEST_SLURM=release,
               SLURMFT_DOCKER_TEST_CLUSTER=f"sft-dm{release.replace('.', '')}")
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "pytest", suite, "-q", "-s", "-p",
                         "no:cacheprovider", f"--junitxml={xml}", *extra],
                        cwd=ROOT, env=env, capture_output=True, text=True)
    tests = junit_results(xml)
    tail = "\n".join((cp.stdout + cp.stderr).strip().splitlines()[-3:])
    return {"release": release, "returncode": cp.returncode, "tests": tests,
            "seconds": round(time.monotonic() - t0, 1), "version": slurm_version(cp.stdout),
            "summary": tail}


def table(results: list[dict]) -> str:
    names: list[str] = []
    for r in results:
        names += [n for n in r["tests"] if n not in names]
    head = "| test | " + " | ".join(
        f"{r['release']} ({r['version'] or '?'})" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for n in names:
        cells = [MARK.get(r["tests"].get(n, ""), "not run") for r in results]
        lines.append(f"| {n.removeprefix('test_')} | " + " | ".join(cells) + " |")
    lines.append("| **result** | " + " | ".join(
        ("passed" if r["returncode"] == 0 else f"rc={r['returncode']}") + f", {r['seconds']:g} s"
        for r in results) + " |")
    return "\n".join(lines)


def _count(r: dict) -> str:
    passed = sum(1 for v in r["tests"].values() if v == "passed")
    ok = "passed" if r["returncode"] == 0 else f"FAILED (rc={r['returncode']})"
    return f"{ok}: {passed} of {len(r['tests'])} tests"


def backend_table(results: list[dict], rest: dict | None) -> str:
    """Backend x release: what this run tested on each (``rest``: the slurmrestd suite's
    result on 22.05, None when it was not run)."""
    head = "| backend (`slurm.backend`) | " + " | ".join(
        f"{r['release']} ({r['version'] or '?'})" for r in results) + " |"
    cli = [f"{_count(r)} (`{SUITE}`)" for r in results]
    rest_cells = []
    for r in results:
        if r["release"] not in REST_RELEASES:
            rest_cells.append("not supported: its slurmrestd serves later APIs than v0.0.38")
        elif rest is None:
            rest_cells.append("supported, not run")
        else:
            rest_cells.append(f"{_count(rest)} (`{REST_SUITE}`, real slurmrestd)")
    return "\n".join([head, "|---|" + "---|" * len(results),
                      "| `cli` | " + " | ".join(cli) + " |",
                      "| `rest` | " + " | ".join(rest_cells) + " |"])


def write_readme(path: Path, text: str) -> None:
    """Put ``text`` between the README's slurm-matrix markers."""
    doc = path.read_text()
    if README_START not in doc or README_END not in doc:
        raise SystemExit(f"slurm_matrix: {path} has no {README_START} ... {README_END} section")
    head, rest = doc.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_START}\n{text}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--releases", default=",".join(RELEASES))
    ap.add_argument("--out", default="build/slurm-matrix", type=Path,
                    help="path prefix of the .md/.json/.xml files (default build/slurm-matrix)")
    ap.add_argument("--readme", type=Path, default=None,
                    help="also write the tables into this file, between its "
                         f"{README_START} and {README_END} lines")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = ap.parse_args(argv)
    out = args.out if args.out.is_absolute() else ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    releases = [r.strip() for r in args.releases.split(",") if r.strip()]
    unknown = [r for r in releases if r not in RELEASES]
    if unknown:
        print(f"slurm_matrix: unknown release(s) {', '.join(unknown)}: use {', '.join(RELEASES)}",
              file=sys.stderr)
        return 2
    results = []
    for release in releases:
        print(f"== Slurm {release}: {SUITE}", flush=True)
        r = run_release(release, out, args.pytest_args)
        print(r["summary"], flush=True)
        results.append(r)
    rest = None
    if any(r in REST_RELEASES for r in releases):
        print(f"== slurmrestd backend, Slurm {', '.join(REST_RELEASES)}: {REST_SUITE}", flush=True)
        rest = run_release(REST_RELEASES[0], out, args.pytest_args, REST_SUITE, "rest")
        print(rest["summary"], flush=True)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = (f"Slurm release matrix ({SUITE}, docker cluster per release), run {when}:\n\n"
          f"{table(results)}\n\nBackends of the Slurm adapter, same run:\n\n"
          f"{backend_table(results, rest)}\n")
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"when": when, "suite": SUITE,
                                                    "results": results, "rest": rest},
                                                   indent=1) + "\n")
    print(md)
    if args.readme is not None:
        write_readme(args.readme if args.readme.is_absolute() else ROOT / args.readme, md)
    failed = [r["release"] for r in results + ([rest] if rest else []) if r["returncode"] != 0]
    print(f"slurm matrix: {len(results) - len(failed)} of {len(results)} releases passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
