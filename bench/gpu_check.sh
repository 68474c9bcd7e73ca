#!/usr/bin/env bash
# The GPU path, proven in one prepared run (issue 20 section 3): correctness, speed and memory in one
# JSON report, in under 8 minutes on an H100 / H200.
#
#   bash bench/gpu_check.sh                        # the full check on CUDA
#   bash bench/gpu_check.sh --device cpu --quick   # tiny models on a CPU, seconds (tests/test_gpu_check.py)
#
# Arguments go to bench/gpu_check.py (--only SECTION..., --budget-s, --no-compile, --out-dir).
# Wheels found in .whl/ or wheels/ (open-clip-torch, ftfy, wcwidth: bench/README.md) are installed
# offline into a private folder first, when open_clip is not importable. The report goes to $OUT when
# set, else bench/results/. GPU_CHECK_HARD_LIMIT_S (default 480) kills the run if the Python side's
# own budget (420 s) fails to stop it; what it measured up to then is already in the report.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import open_clip, ftfy" 2>/dev/null; then
    for dir in .whl wheels; do
        if compgen -G "$dir/*.whl" >/dev/null; then
            site=${TMPDIR:-/tmp}/gpu_check_site
            echo "gpu_check.sh: installing $(ls "$dir"/*.whl | wc -l) carried wheels from $dir/ into $site"
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$site" "$dir"/*.whl || exit 3
            export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
            break
        fi
    done
    "$PY" -c "import open_clip, ftfy" 2>/dev/null || echo "gpu_check.sh: open_clip is not importable and no wheels" \
        "were carried (bench/README.md: pip download ... -d .whl, carry .whl); the sections that need it will fail"
fi

export PYTHONUNBUFFERED=1
exec timeout --kill-after=15 "${GPU_CHECK_HARD_LIMIT_S:-480}" "$PY" bench/gpu_check.py "$@"
