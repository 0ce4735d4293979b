#!/bin/sh
# Regenerates crates/demon-audio/tests/fixtures/click-108bpm.flac, the sox-made click track of
# the tempo test (crates/demon-audio/tests/analysis_files.rs): a 600-sample 1.5 kHz burst with
# a 500-sample fade-out, then silence, one beat every 24 500 samples at 44.1 kHz (exactly
# 108 BPM). Needs sox (Debian: apt-get install sox).
set -e
out="$(dirname "$0")/../crates/demon-audio/tests/fixtures/click-108bpm.flac"
sox -r 44100 -n -c 1 -b 16 "$out" synth 600s sine 1500 fade q 0 600s 500s pad 0 23900s repeat 31
