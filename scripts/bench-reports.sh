#!/usr/bin/env bash
# Re-runs every `demon bench` behind a figure published in README.md and docs/*.md, rewrites the
# reports in docs/bench/, then rewrites the figures from them (crates/demon-cli/tests/figures.rs
# with DEMON_UPDATE_FIGURES=1). Review the diff before committing: prose around a figure ("about
# 68x") may need words changed too.
#
#   scripts/bench-reports.sh            # every report (the ACE-Step ones take about 2 h on 2 cores)
#   scripts/bench-reports.sh sketch     # only the named reports: sketch acestep-model-60s
#                                       # acestep-model-batches-10s acestep-lora acestep-2b-ticks
#
# docs/bench/cpu-vs-pytorch.json has its own command (it needs a Python venv with PyTorch):
# tools/cpu-vs-pytorch/run.sh.
#
# Add a report here when a figure needs a new one (name, then the bench arguments), and annotate
# the figure as docs/performance.md ("Figures and their reports") says.
set -euo pipefail
cd "$(dirname "$0")/.."

# name|arguments of `demon bench` (each run also gets --json)
reports=(
  "sketch|"
  "knob-to-ear|--only latency"
  "acestep-model-60s|--backend acestep --random-model turbo-2b --model-seconds 60 --model-batches 1 --vae-seconds 10 --repeats 2"
  "acestep-model-batches-10s|--backend acestep --random-model turbo-2b --model-sizes turbo-2b,xl-turbo --model-seconds 10 --model-batches 1,2,4,8 --vae-seconds 0 --repeats 1"
  "acestep-2b-60s-f32|--backend acestep --random-model turbo-2b --only model --model-seconds 60 --model-batches 1 --vae-seconds 0 --repeats 2 --cpu-precision f32"
  "acestep-2b-60s-bf16|--backend acestep --random-model turbo-2b --only model --model-seconds 60 --model-batches 1 --vae-seconds 0 --repeats 2 --cpu-precision bf16"
  "acestep-lora|--backend acestep --random-model turbo-2b --model-seconds 10 --model-batches 1 --vae-seconds 0 --repeats 2"
  "acestep-2b-ticks|--backend acestep --random-model turbo-2b --only ticks --depths 1,2,4,8 --seconds 10 --ticks 8 --plot docs/bench-acestep-2b.png"
)

want=("$@")
known=()
for r in "${reports[@]}"; do known+=("${r%%|*}"); done
for w in "${want[@]}"; do
  [[ " ${known[*]} " == *" $w "* ]] || { echo "bench-reports: unknown report \`$w\` (known: ${known[*]})" >&2; exit 2; }
done

cargo build --release -p demon-cli
bin=target/release/demon
mkdir -p docs/bench
for r in "${reports[@]}"; do
  name=${r%%|*}
  args=${r#*|}
  if [ ${#want[@]} -gt 0 ] && [[ " ${want[*]} " != *" $name "* ]]; then continue; fi
  echo "== docs/bench/$name.json: demon bench $args --json"
  t0=$SECONDS
  # shellcheck disable=SC2086 # the arguments are words
  "$bin" bench $args --json >"docs/bench/$name.json.new"
  mv "docs/bench/$name.json.new" "docs/bench/$name.json"
  echo "== done in $((SECONDS - t0)) s"
done

DEMON_UPDATE_FIGURES=1 cargo test -q -p demon-cli --test figures
git --no-pager diff --stat -- docs README.md crates/*/README.md || true
