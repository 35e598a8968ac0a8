#!/usr/bin/env bash
# Wheel check (issue 17): build the wheel, install it into a fresh venv outside the checkout
# and run the product from a folder outside the checkout, so anything that still finds its
# files through the repository layout (templates, examples) fails here and not at a site.
#
#   .ci/wheel-check.sh [PYTHON]     PYTHON: the main venv's interpreter (default .venv/bin/python)
#
# Runtime dependencies come as wheels from build/wheel/deps, filled by `pip wheel` (it downloads
# wheels and builds the sdist-only ones such as python-hostlist; pip's cache makes a rerun cheap);
# when the index cannot be reached, the wheels already there are used (offline).
# As root with Slurm installed it also brings a 2-node cluster named sft-wheel up and down.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${1:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
WHEEL_DIR=$REPO/build/wheel
DEPS_DIR=$WHEEL_DIR/deps
VENV=${SLURMFT_WHEEL_VENV:-/tmp/slurmft-wheel-venv}
CLUSTER=sft-wheel
step() { printf 'wheel-check: %s\n' "$*"; }
fail() { printf 'wheel-check: FAILED: %s\n' "$*" >&2; exit 1; }

step "building the wheel"
# setuptools copies into build/lib and never removes what the tree no longer has: start clean.
rm -rf "$REPO/build/lib" "$REPO"/build/bdist.* "$WHEEL_DIR"/slurmft-*.whl "$DEPS_DIR"/slurmft-*.whl
mkdir -p "$WHEEL_DIR"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEEL_DIR" "$REPO" >"$WHEEL_DIR/build.log" 2>&1 ||
    { tail -20 "$WHEEL_DIR/build.log" >&2; fail "pip wheel of the checkout failed (log: $WHEEL_DIR/build.log)"; }
wheels=("$WHEEL_DIR"/slurmft-*.whl)
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || fail "expected one slurmft wheel in $WHEEL_DIR"
WHEEL=${wheels[0]}

step "collecting runtime dependencies in $DEPS_DIR"
mkdir -p "$DEPS_DIR"
if ! "$PY" -m pip wheel -q --no-build-isolation -w "$DEPS_DIR" "$WHEEL" >"$WHEEL_DIR/deps.log" 2>&1; then
    ls "$DEPS_DIR"/*.whl >/dev/null 2>&1 ||
        fail "pip wheel of the dependencies failed and $DEPS_DIR is empty (see $WHEEL_DIR/deps.log)"
    step "index unreachable: using the wheels already in $DEPS_DIR"
fi

step "installing $(basename "$WHEEL") into a fresh venv $VENV"
rm -rf "$VENV"
"$PY" -m venv --without-pip "$VENV"
"$PY" -m pip --python "$VENV/bin/python" install -q --no-index --find-links "$DEPS_DIR" "$WHEEL"

WORK=$(mktemp -d /tmp/slurmft-wheel-check.XXXXXX)
cleanup() {
    if [ -n "${CLUSTER_UP:-}" ]; then "$VENV/bin/slurmft" cluster down --name "$CLUSTER" >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
# Nothing from the checkout may be importable: no PYTHONPATH, and the package must live in the venv.
unset PYTHONPATH
where=$("$VENV/bin/python" -c 'import slurmft, os; print(os.path.realpath(slurmft.__file__))')
case $where in "$REPO"/*) fail "slurmft was imported from the checkout ($where)";; esac

step "slurmft render job"
"$VENV/bin/slurmft" render job --nodes 'node[1-2]' --train-cmd 'python3 train.py' \
    --checkpoint-dir "$WORK/ckpt" -o job.sh
grep -q '^#SBATCH' job.sh || fail "render job wrote no #SBATCH lines"

step "slurmft render logging --out DIR"
mkdir logging
"$VENV/bin/slurmft" render logging --out logging
[ -s logging/filebeat.yml ] && [ -s logging/logstash.conf ] || fail "render logging wrote no filebeat.yml/logstash.conf"

step "slurmft render deploy --out DIR"
"$VENV/bin/slurmft" render deploy --out deploy >/dev/null
[ -s deploy/slurmft.rules.yml ] && [ -s deploy/slurmft-watch.service ] && [ -x deploy/slurmft-epilog ] ||
    fail "render deploy wrote no rules, unit or epilog wrapper (templates/deploy missing from the wheel?)"

if [ "$(id -u)" = 0 ] && command -v slurmctld >/dev/null; then
    step "slurmft cluster up --name $CLUSTER --nodes 2"
    CLUSTER_UP=1
    "$VENV/bin/slurmft" cluster up --name "$CLUSTER" --nodes 2
    for _ in $(seq 30); do     # slurmd registers within seconds of `up`
        state=$("$VENV/bin/slurmft" cluster exec --name "$CLUSTER" -- sinfo -h -o '%D %t' || true)
        [ "$state" = "2 idle" ] && break
        sleep 1
    done
    [ "$state" = "2 idle" ] || fail "the cluster's 2 nodes are not idle (sinfo: ${state:-nothing})"
    step "slurmft cluster down --name $CLUSTER"
    "$VENV/bin/slurmft" cluster down --name "$CLUSTER"
    CLUSTER_UP=
else
    step "skipping cluster up/down (needs root and Slurm)"
fi
step "ok"
