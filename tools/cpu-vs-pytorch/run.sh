#!/usr/bin/env bash
# One command for the side-by-side CPU speed comparison (issue 13): builds our timing binary,
# sets up the pinned Python environment if it is missing, and runs bench.py, which writes
# docs/bench/cpu-vs-pytorch.json. Extra arguments go to bench.py (e.g. --reps 5).
#   tools/cpu-vs-pytorch/run.sh
# Environment: VENV (default /tmp/cvp-venv), CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-/tmp/cvp-venv}"
TARGET="${CARGO_TARGET_DIR:-target}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet -r tools/cpu-vs-pytorch/requirements.txt
cargo build --release --quiet -p demon-acestep --example dit_speed
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (the comparison wants a quiet machine)" >&2
exec "$VENV/bin/python" tools/cpu-vs-pytorch/bench.py --bin "$TARGET/release/examples/dit_speed" \
    --out docs/bench/cpu-vs-pytorch.json "$@"
