#!/usr/bin/env bash
# The whole GPU benchmark in one command, in order of value, each result written to OUT_DIR
# the moment it exists (a session cut short still leaves what it had):
#
#   bench/gpu_session.sh [--rehearse] [--cifar10 TAR|DIR] [--airbench FILE] [--wheelhouse DIR] OUT_DIR
#
#   0. install the wheelhouse (bench/wheelhouse.sh made it) with pip --no-index, and unpack the data
#   1. every CUDA test of the tree (`-m cuda`; the step fails when none ran: cuda_tests.txt), a
#      check that inductor finds a C compiler, Python's headers and Triton, then 1-epoch runs on
#      cuda: quickstart in fp32, bf16 + channels-last + compile + DeviceLoader, fp16 + GradScaler,
#      cifar10_speed (precision auto: bf16 from compute capability 8, fp16 before), a rollback after
#      a divergence, a resume on fewer GPUs than saved the run, an fp16 resume of a bf16 run, and
#      two train.deterministic runs with identical weights (smoke.json)
#   2. resnet18_cifar images/s against the bf16 bound and a hand-written loop (throughput.json)
#   3. cifar10_speed time to 94% on the --cifar10 data, 2 seeds (speed.json), and the airbench94
#      script on the same data when --airbench names it (airbench.json)
#   4. the rest of the table: CIFAR-100 shape, DeviceLoader images/s (rest.json)
#   5. the defaults against every speed option set by hand and a hand-written loop, whole
#      processes (`python -m bench defaults --device cuda`; its table in session.log; a rehearsal
#      runs it with --quick on the CPU)
# then summary.md (the table for BENCHMARKS.md; `python -m bench gpu --collect OUT_DIR` writes it
# there). session.log has every step's output. OUT_DIR holds 8 files at most.
#
# Every step has its own time cap (CAP_<STEP> seconds, below) and all of them together stop
# at TOTAL_S (540: the whole fits in 9 minutes); a step that fails or runs out of time is
# written down in session.log and the result files, and the next one starts.
# --rehearse (or TRAINPIPE_GPU_REHEARSE=1): the same script on the CPU at tiny sizes (the pip
# install is a --dry-run): checks that it runs before a GPU is spent on it.
#
# Options may also come from the environment: CIFAR10, AIRBENCH, WHEELHOUSE, PYTHON, WORK (a
# scratch folder for the unpacked data and caches; default /tmp/trainpipe-gpu-session), and
# PARTS (the measurement parts to run, default "smoke throughput speed airbench rest").
# Without --cifar10, the data is looked for in .carry/cifar10/images.tar.gz and then
# ../shared/data/cifar10/images.tar.gz; without --wheelhouse, in .carry/wheels; without
# --airbench, .carry/airbench94.py.

set -u
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REHEARSE=${TRAINPIPE_GPU_REHEARSE:-0}
CIFAR10=${CIFAR10:-}
AIRBENCH=${AIRBENCH:-}
WHEELHOUSE=${WHEELHOUSE:-}
OUT=""
usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --rehearse) REHEARSE=1 ;;
        --cifar10) CIFAR10=${2:?--cifar10 needs a path}; shift ;;
        --airbench) AIRBENCH=${2:?--airbench needs a file}; shift ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a folder}; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_session.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { echo "gpu_session.sh: one OUT_DIR only" >&2; exit 2; }; OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || { usage >&2; exit 2; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
WORK=${WORK:-${TMPDIR:-/tmp}/trainpipe-gpu-session}
mkdir -p "$WORK"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=$(command -v python3 || command -v python); fi
fi
[ -n "$CIFAR10" ] || for c in "$REPO/.carry/cifar10/images.tar.gz" "$REPO/../shared/data/cifar10/images.tar.gz"; do
    [ -e "$c" ] && { CIFAR10=$c; break; }
done
[ -n "$WHEELHOUSE" ] || { [ -d "$REPO/.carry/wheels" ] && WHEELHOUSE=$REPO/.carry/wheels; }
[ -n "$AIRBENCH" ] || { [ -f "$REPO/.carry/airbench94.py" ] && AIRBENCH=$REPO/.carry/airbench94.py; }

# Time caps, seconds (override any with the environment).
TOTAL_S=${TOTAL_S:-540}
CAP_INSTALL=${CAP_INSTALL:-60}
CAP_DATA=${CAP_DATA:-45}
CAP_TESTS=${CAP_TESTS:-75}
CAP_INDUCTOR=${CAP_INDUCTOR:-40}
CAP_SMOKE=${CAP_SMOKE:-160}
CAP_THROUGHPUT=${CAP_THROUGHPUT:-110}
CAP_SPEED=${CAP_SPEED:-130}
CAP_AIRBENCH=${CAP_AIRBENCH:-60}
CAP_REST=${CAP_REST:-90}
CAP_DEFAULTS=${CAP_DEFAULTS:-150}
MIN_S=10  # a step with less time than this left is not started

LOG=$OUT/session.log
START=$(date +%s)
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TRAINPIPE_CACHE_DIR=${TRAINPIPE_CACHE_DIR:-$WORK/cache} TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor}
cd "$REPO" || exit 2

log() { echo "[gpu_session $(date +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( TOTAL_S - ($(date +%s) - START) )); }
FAILED=()
# step NAME CAP COMMAND...: run COMMAND under min(CAP, time left), its output into session.log.
step() {
    local name=$1 cap=$2 rest
    shift 2
    rest=$(left)
    [ "$rest" -lt "$cap" ] && cap=$rest
    if [ "$cap" -lt "$MIN_S" ]; then
        log "$name: NOT RUN (${rest}s left of TOTAL_S=$TOTAL_S)"; FAILED+=("$name (not run)"); return 1
    fi
    log "$name: start (cap ${cap}s): $*"
    local t0=$(date +%s) rc
    timeout -k 10 "$cap" "$@" >>"$LOG" 2>&1
    rc=$?
    local took=$(( $(date +%s) - t0 ))
    case $rc in
        0) log "$name: ok in ${took}s" ;;
        124|137) log "$name: CUT SHORT at its ${cap}s cap (rc $rc); what it wrote stays"; FAILED+=("$name (cap)") ;;
        *) log "$name: FAILED (rc $rc) after ${took}s; see above"; FAILED+=("$name (rc $rc)") ;;
    esac
    return $rc
}

log "start: OUT=$OUT REPO=$REPO rehearse=$REHEARSE python=$PYTHON"
log "cifar10=${CIFAR10:-none} airbench=${AIRBENCH:-none} wheelhouse=${WHEELHOUSE:-none} work=$WORK"
{ command -v nvidia-smi >/dev/null && nvidia-smi -L; uname -a; "$PYTHON" -V; } >>"$LOG" 2>&1

# 0. packages and data ------------------------------------------------------------------
if [ -n "$WHEELHOUSE" ] && [ -f "$WHEELHOUSE/requirements.txt" ]; then
    DRY=(); [ "$REHEARSE" = 1 ] && DRY=(--dry-run)
    if ! step install "$CAP_INSTALL" "$PYTHON" -m pip install --no-index --find-links "$WHEELHOUSE" \
        --no-cache-dir --disable-pip-version-check "${DRY[@]}" -r "$WHEELHOUSE/requirements.txt" \
        && compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
        # E.g. an environment that is not writable: the wheels into a folder of their own instead.
        step install_target "$CAP_INSTALL" "$PYTHON" -m pip install --no-index --no-deps --no-cache-dir \
            --disable-pip-version-check --upgrade "${DRY[@]}" --target "$WORK/site" "$WHEELHOUSE"/*.whl \
            && export PYTHONPATH=$PYTHONPATH:$WORK/site
    fi
elif [ -n "$WHEELHOUSE" ]; then
    log "install: $WHEELHOUSE has no requirements.txt (make it with bench/wheelhouse.sh); skipped"
fi
"$PYTHON" -c "import torch, trainpipe; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else '-')" >>"$LOG" 2>&1 \
    || log "import check FAILED: trainpipe or a package it needs does not import (see above)"
if [ "$REHEARSE" != 1 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    log "no CUDA device here: nothing to measure (bench/gpu_session.sh --rehearse runs it on the CPU)"
    exit 2
fi

unpack() {  # a tar of the image folder -> $WORK/cifar10 (train/, test/ somewhere inside)
    local dest=$WORK/cifar10
    if [ ! -f "$dest/.unpacked" ]; then
        rm -rf "$dest" && mkdir -p "$dest" && tar -xzf "$1" -C "$dest" && touch "$dest/.unpacked" || return 1
    fi
    local train
    train=$(find "$dest" -maxdepth 3 -type d -name train | head -n 1)
    [ -n "$train" ] && [ -d "$(dirname "$train")/test" ] || { echo "no train/ and test/ in $1"; return 1; }
    echo "$(dirname "$train")" >"$WORK/cifar10.path"
}
export -f unpack
export WORK
DATA=""
if [ -n "$CIFAR10" ] && [ -d "$CIFAR10" ]; then
    DATA=$CIFAR10
elif [ -n "$CIFAR10" ] && [ -f "$CIFAR10" ]; then
    rm -f "$WORK/cifar10.path"
    step data "$CAP_DATA" bash -c 'unpack "$1"' unpack "$CIFAR10" && DATA=$(cat "$WORK/cifar10.path")
fi
[ -n "$DATA" ] && log "data: $DATA ($(find "$DATA/train" -type f | wc -l) training images)" \
    || log "data: none (the time-to-accuracy parts are skipped; smoke uses random images)"

# 1-4. the measurements ---------------------------------------------------------------------
ARGS=(--out "$OUT" --runs 2 --rounds 3 --airbench-runs 3)
[ "$REHEARSE" = 1 ] && ARGS+=(--rehearse)
[ -n "$DATA" ] && ARGS+=(--cifar10 "$DATA")
[ -n "$DATA" ] && [ -n "$AIRBENCH" ] && ARGS+=(--airbench "$AIRBENCH")
AS="bench/gpu_session.sh$([ "$REHEARSE" = 1 ] && echo ' --rehearse')$([ -n "$DATA" ] && echo ' --cifar10 ...')$([ -n "$AIRBENCH" ] && echo ' --airbench ...') OUT_DIR"
ARGS+=(--as-command "$AS")
collect() { "$PYTHON" -m bench gpu --collect "$OUT" --no-write >/dev/null 2>>"$LOG"; }

REH=(); [ "$REHEARSE" = 1 ] && REH=(--rehearse)
# Every test marked @pytest.mark.cuda, anywhere under tests/; the step fails when none ran.
step cuda_tests "$CAP_TESTS" "$PYTHON" -m bench.gpu_checks tests "$OUT" "${REH[@]}"
tail -n 1 "$OUT/cuda_tests.txt" 2>/dev/null | tee -a "$LOG"
# torch.compile's inductor needs a C compiler, Python's headers and Triton: said here, before
# the compiled runs below fail one by one.
step inductor "$CAP_INDUCTOR" "$PYTHON" -m bench.gpu_checks inductor "${REH[@]}"
for part in ${PARTS-smoke throughput speed airbench rest}; do
    cap_var=CAP_$(echo "$part" | tr '[:lower:]' '[:upper:]')
    step "$part" "${!cap_var}" "$PYTHON" -m bench gpu --part "$part" "${ARGS[@]}"
    collect
done
# 5. the defaults against every speed option set by hand and a hand-written loop, whole processes
# (`python -m bench defaults`; its table goes to session.log). The rehearsal runs the same
# benchmark on the CPU, one round of the resnet18 workload on a tiny image folder of its own.
if [ "$REHEARSE" = 1 ]; then
    step defaults "$CAP_DEFAULTS" "$PYTHON" -m bench defaults --quick --device cpu --no-configs --no-threads \
        --no-write
elif [ -n "$DATA" ]; then
    step defaults "$CAP_DEFAULTS" "$PYTHON" -m bench defaults --device cuda --cifar10 "$DATA" --rounds 2 \
        --config-rounds 2 --no-threads --no-write
else
    log "defaults: skipped (needs --cifar10)"
fi

collect
cat "$OUT/summary.md" | tee -a "$LOG"
if [ ${#FAILED[@]} -gt 0 ]; then
    log "done in $(( $(date +%s) - START ))s; not ok: ${FAILED[*]}"
    exit 1
fi
log "done in $(( $(date +%s) - START ))s; every step ok"
