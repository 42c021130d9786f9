#!/usr/bin/env bash
# Every GPU stage of bench/gpu.py, each under its own time guard so that one failing or slow stage leaves the
# others' results (bench/README.md, "GPU"). Run from the repository root:
#
#     bash bench/gpu.sh --out DIR          # on a CUDA machine: tests/gpu, the side-by-side costs, the short run
#     bash bench/gpu.sh --out DIR --tiny   # the same stages on tiny shapes, on the CPU
#
# Writes into DIR (7 files): tests-gpu.log, bench.json, bench.log, e2e.json, e2e.log, captions.json,
# captions.meta.json. Wheels in .whl/ (packages the machine lacks, never torch or numpy) are installed first into
# /tmp/site, which goes first on PYTHONPATH.
set -u
OUT="" TINY="" PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --tiny) TINY="--tiny"; shift ;;
    *) echo "bench/gpu.sh: unknown argument $1 (use --out DIR [--tiny])" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] || { echo "bench/gpu.sh: --out DIR is required" >&2; exit 2; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  if "$PY" -m pip --version > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  else  # an environment without pip: a wheel is a zip of what goes on the path
    "$PY" -c 'import glob, zipfile; [zipfile.ZipFile(w).extractall("/tmp/site") for w in sorted(glob.glob(".whl/*.whl"))]'
  fi && export PYTHONPATH="/tmp/site:$PYTHONPATH"
  echo "[gpu.sh] wheels: $(ls .whl | tr '\n' ' ')"
fi
WORK="$(mktemp -d)"  # the e2e run's LM directory, shapes set and checkpoints: a fresh run every time
GUARD_TESTS=75 GUARD_BENCH=160 GUARD_E2E=130
[ -n "$TINY" ] && GUARD_TESTS=60 GUARD_BENCH=120 GUARD_E2E=120

stage() {  # stage NAME GUARD_SECONDS COMMAND...: runs, logs, and reports its exit status and time
  local name="$1" guard="$2"; shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$guard" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[gpu.sh] $name: exit $rc after $((SECONDS - start))s (guard ${guard}s)" | tee -a "$OUT/$name.log"
}

stage tests-gpu "$GUARD_TESTS" "$PY" -m pytest -q tests/gpu
stage bench "$GUARD_BENCH" "$PY" bench/gpu.py bench $TINY --out "$OUT/bench.json"
stage e2e "$GUARD_E2E" "$PY" bench/gpu.py e2e $TINY --out "$OUT/e2e.json" --captions "$OUT/captions.json" --work "$WORK"
rm -rf "$WORK"
