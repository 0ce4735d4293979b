#!/usr/bin/env bash
# DEMON's GPU checks from a carried bundle (issue #14), for a GPU machine with the NVIDIA driver
# and NVIDIA's CUDA 13 libraries (cuBLAS, cuRAND, cudart) in some Python environment, and no Rust
# toolchain and no network. Build the bundle first on any machine with scripts/gpu-bundle.sh.
# From the repository root:
#
#   scripts/gpu-run.sh [BUNDLE_DIR]     # default gpu-bundle/; results in $OUT (default gpu-run-out/)
#
# 1. unpacks the bundle (checksums from its manifest) and finds the libraries the binaries link:
#    the driver's libcuda.so.1 (ldconfig, /usr/local/nvidia, ...) and the CUDA 13 runtime
#    libraries in the Python environments it can see (site-packages/nvidia/.../lib), or in
#    $DEMON_CUDA_LIBS (colon-separated folders or Python environment roots);
# 2. prints a one-screen probe: GPU, driver, memory, bundle, libraries found;
# 3. runs, in this order, each under its own deadline, all inside $GPU_RUN_SECONDS (default 530,
#    so the run ends inside 9 minutes):
#    tests   the GPU tests (crates/demon-acestep/tests/gpu.rs, `--include-ignored`): DiT and VAE against
#            the committed tiny fixtures (f32 within 1e-4 of the reference, bf16 within 2e-2 of
#            f32 relative), rows across batch sizes;
#    model   the model bench: 2B random weights, 60 s songs, batch 1/4/8, f32 and bf16 products,
#            and a 10 s VAE decode;
#    engine  the engine bench: `demon bench --backend acestep --random-model turbo-2b --compute
#            cuda --matmul bf16 --only ticks --depths 1,4,8 --seconds 60 --steps 8 --json`;
#    profile the same at D = 8 for 8 ticks with DEMON_DIT_PROFILE=1 (block times), when time is
#            left;
# 4. ends with a short table of the goal figures beside DEMON's.
#
# Environment: OUT (results), GPU_RUN_SECONDS (whole-run budget), GPU_RUN_ONLY (comma-separated
# subset of tests,model,engine,profile, e.g. to rerun one part), DEMON_CUDA_LIBS (extra library
# places). Writes at most 7 files into $OUT: run.log, gpu-tests.log, model-f32.json,
# model-bf16.json, engine-bf16.json, engine-profile.json, summary.txt.
#
# Without a driver it still runs (a rehearsal): the binaries link libcuda.so.1 at start, and
# without one the dynamic loader stops them before main (exit 127), so it starts them with the
# bundle's stub libcuda instead; every check then ends with "no CUDA device" and the summary says
# nothing was measured (exit status 2).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
BUNDLE=${1:-$REPO/gpu-bundle}
OUT=${OUT:-$REPO/gpu-run-out}
TOTAL_S=${GPU_RUN_SECONDS:-530}
ONLY=${GPU_RUN_ONLY:-tests,model,engine,profile}
START=$(date +%s)
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
say() { printf '== %s\n' "$*"; }
wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
left() { echo $((TOTAL_S - ($(date +%s) - START))); }
# The deadline of a step: its own cap, or what is left of the run less 15 s for the summary.
deadline() {
    local cap=$1 rest
    rest=$(($(left) - 15))
    if [ "$rest" -lt "$cap" ]; then echo "$rest"; else echo "$cap"; fi
}
PY=$(command -v python3 || command -v python || true)
[ -n "$PY" ] || { echo "error: gpu-run.sh needs python3 (to read the manifest and the JSON reports)"; exit 1; }

# ---------------------------------------------------------------------------------------------
say "bundle $BUNDLE"
[ -f "$BUNDLE/manifest.json" ] || {
    echo "error: no bundle at $BUNDLE (build it with scripts/gpu-bundle.sh and carry the folder)"
    exit 1
}
BIN=${TMPDIR:-/tmp}/demon-gpu-run
rm -rf "$BIN"
mkdir -p "$BIN"
"$PY" - "$BUNDLE" "$BIN" <<'PY' || exit 1
import gzip, hashlib, json, os, shutil, sys
bundle, out = sys.argv[1:]
m = json.load(open(os.path.join(bundle, "manifest.json")))
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for c in iter(lambda: f.read(1 << 20), b""):
            h.update(c)
    return h.hexdigest()
for name, f in m["files"].items():
    src = os.path.join(bundle, f["file"])
    want = f.get("compressed_sha256", f["sha256"])
    if sha(src) != want:
        sys.exit(f"error: {src} does not match the manifest's checksum (a partial copy?)")
    dst = os.path.join(out, name if name != "libcuda-stub" else "stub/libcuda.so.1")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if src.endswith(".gz"):
        with gzip.open(src, "rb") as a, open(dst, "wb") as b:
            shutil.copyfileobj(a, b)
        if sha(dst) != f["sha256"]:
            sys.exit(f"error: {dst} unpacked to the wrong bytes")
    else:
        shutil.copy(src, dst)
    os.chmod(dst, 0o755)
print(f"unpacked {', '.join(m['files'])} to {out}: {m['version']}, commit {m['git_commit'][:12]}"
      f"{' (dirty)' if m['git_dirty'] else ''}, built {m['built_utc']}, nvcc {m['nvcc']}, "
      f"compute capability {m['compute_capability']}")
PY
manifest() { "$PY" -c 'import json, sys; m = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$BUNDLE/manifest.json" "$1"; }
NEEDED=$(manifest '" ".join(sorted(set(m["files"]["demon"]["needed"] + m["files"]["gpu-tests"]["needed"])))')
CAP=$(manifest 'm["compute_capability"]')

# ---------------------------------------------------------------------------------------------
# Where each library the binaries link lives.
DEMON_CUDA_LIBS=${DEMON_CUDA_LIBS:-}
python_sites() {
    local py
    for py in /opt/torch/.venv/bin/python3 ${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python3} \
        $(command -v python3 2>/dev/null) $(ls -d /opt/*/.venv/bin/python3 /opt/*/venv/bin/python3 2>/dev/null); do
        [ -x "$py" ] || continue
        "$py" -c 'import site, sys
print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null
    done
    local d
    for d in ${DEMON_CUDA_LIBS//:/ }; do
        [ -d "$d" ] && echo "$d"
        ls -d "$d"/lib/python3*/site-packages 2>/dev/null
    done
}
SITES=$(python_sites | awk '!seen[$0]++' | while read -r d; do [ -d "$d" ] && echo "$d"; done)
find_lib() {
    local lib=$1 hit d
    hit=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l {print $NF; exit}')
    [ -n "$hit" ] && { echo "$hit"; return; }
    for d in ${DEMON_CUDA_LIBS//:/ } /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu \
        /usr/lib64 /usr/lib/wsl/lib /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -e "$d/$lib" ] && { echo "$d/$lib"; return; }
    done
    [ "$lib" = libcuda.so.1 ] && return # the driver is not a Python package
    while read -r d; do
        [ -n "$d" ] || continue
        hit=$(find "$d" -maxdepth 5 -name "$lib" \( -type f -o -type l \) 2>/dev/null | grep -m1 nvidia)
        [ -n "$hit" ] && { echo "$hit"; return; }
    done <<<"$SITES"
}
LIBDIRS=""
MISSING=""
DRIVER=""
declare -A FOUND
for lib in $NEEDED; do
    p=$(find_lib "$lib")
    FOUND[$lib]=${p:-missing}
    if [ -z "$p" ]; then
        MISSING="$MISSING $lib"
        continue
    fi
    [ "$lib" = libcuda.so.1 ] && DRIVER=$p
    d=$(dirname "$p")
    case ":$LIBDIRS:" in *":$d:"*) ;; *) LIBDIRS="${LIBDIRS:+$LIBDIRS:}$d" ;; esac
done
STUB=""
if [ -z "$DRIVER" ]; then
    STUB="$BIN/stub"
    LIBDIRS="$STUB${LIBDIRS:+:$LIBDIRS}"
    MISSING=${MISSING/ libcuda.so.1/}
fi
export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The driver compiles candle's PTX for this GPU on first use; keep the result for the later steps.
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$BIN/nv-cache} CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}

# ---------------------------------------------------------------------------------------------
say "probe"
if command -v nvidia-smi >/dev/null; then
    GPU=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,memory.used --format=csv,noheader 2>&1 | head -1)
    echo "GPU: $GPU"
    gcap=$(echo "$GPU" | awk -F', ' '{gsub(/\./, "", $2); print $2}')
    if [ -n "$gcap" ] && [ "$gcap" != "$CAP" ]; then
        echo "warning: the bundle's kernels are for compute capability $CAP, this GPU is $gcap: rebuild with CUDA_COMPUTE_CAP=$gcap scripts/gpu-bundle.sh"
    fi
else
    GPU=""
    echo "GPU: none (no nvidia-smi)"
fi
echo "host: $(uname -m), $(nproc) cores, $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB memory"}'), $(df -h . | awk 'NR == 2 {print $4 " free here"}')"
for lib in $NEEDED; do
    case $lib in libc.so* | libm.so* | libgcc_s.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux*) continue ;; esac
    printf '  %-18s %s\n' "$lib" "${FOUND[$lib]}"
done
if [ -n "$STUB" ]; then
    echo "no NVIDIA driver: libcuda.so.1 is not on this machine. The binaries link it at start, so"
    echo "without it the dynamic loader stops them before main (exit 127); they run here with the"
    echo "bundle's stub libcuda instead, and every check ends with 'no CUDA device'."
fi
if [ -n "$MISSING" ]; then
    echo "error: not found:$MISSING (set DEMON_CUDA_LIBS to the folder or Python environment that holds them)"
    echo "the binaries cannot start without them; nothing was run"
    exit 1
fi
DEMON="$BIN/demon"
TESTS="$BIN/gpu-tests"
echo "demon: $("$DEMON" --version 2>&1)"

# ---------------------------------------------------------------------------------------------
# step NAME CAP_SECONDS OUTFILE CMD...: run with a deadline; stdout to OUTFILE, stderr to the log.
declare -A STATUS
step() {
    local name=$1 cap=$2 out=$3 t rc
    shift 3
    t=$(deadline "$cap")
    if [ "$t" -lt 20 ]; then
        STATUS[$name]="skipped: no time left"
        say "$name: skipped, $(left) s left"
        return
    fi
    say "$name (deadline $t s): $*"
    local s0
    s0=$(date +%s)
    if [ -n "$out" ]; then
        timeout -k 5 "$t" "$@" >"$OUT/$out"
    else
        timeout -k 5 "$t" "$@"
    fi
    rc=$?
    local took=$(($(date +%s) - s0))
    case $rc in
    0) STATUS[$name]="ok in $took s" ;;
    124 | 137) STATUS[$name]="timed out after $t s" ;;
    *) STATUS[$name]="failed (exit $rc) after $took s" ;;
    esac
    say "$name: ${STATUS[$name]}"
}
BENCH=(bench --backend acestep --random-model turbo-2b --compute cuda)

if wants tests; then
    # DEMON_ACESTEP_FIXTURES: the test binary was built elsewhere; the fixtures are in this tree.
    step tests 90 "" env DEMON_ACESTEP_FIXTURES="$REPO/crates/demon-acestep/tests/fixtures" \
        bash -c "'$TESTS' --include-ignored --test-threads 1 --nocapture 2>&1 | tee '$OUT/gpu-tests.log'; exit \${PIPESTATUS[0]}"
fi
if wants model; then
    step model-f32 140 model-f32.json "$DEMON" "${BENCH[@]}" --matmul f32 --only model \
        --model-seconds 60 --model-batches 1,4,8 --vae-seconds 10 --repeats 2 --json
    step model-bf16 100 model-bf16.json "$DEMON" "${BENCH[@]}" --matmul bf16 --only model \
        --model-seconds 60 --model-batches 1,4,8 --vae-seconds 0 --repeats 2 --json
fi
if wants engine; then
    step engine 150 engine-bf16.json "$DEMON" "${BENCH[@]}" --matmul bf16 --only ticks \
        --depths 1,4,8 --seconds 60 --steps 8 --json
fi
if wants profile; then
    step profile 90 engine-profile.json env DEMON_DIT_PROFILE=1 "$DEMON" "${BENCH[@]}" --matmul bf16 \
        --only ticks --depths 8 --seconds 60 --steps 8 --ticks 8 --json
fi

# ---------------------------------------------------------------------------------------------
say "summary ($(( $(date +%s) - START )) s)"
for k in tests model-f32 model-bf16 engine profile; do
    [ -n "${STATUS[$k]:-}" ] && printf '  %-10s %s\n' "$k" "${STATUS[$k]}"
done
"$PY" - "$OUT" "${GPU:-none}" "${STUB:+stub}" <<'PY' | tee "$OUT/summary.txt"
import json, os, re, sys
out, gpu, stub = sys.argv[1], sys.argv[2], sys.argv[3] == "stub"
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return None
measured = False
log = ""
try:
    log = open(os.path.join(out, "gpu-tests.log")).read()
except OSError:
    pass
if "no CUDA device" in log:
    print("GPU tests: skipped, no CUDA device")
for line in log.splitlines():
    if line.startswith(("PARITY", "ROWS", "OPS")):
        print(line)
        measured = True
for mm in ("f32", "bf16"):
    m = load(f"model-{mm}.json")
    steps = (m or {}).get("dit_step_ms", {}).get("turbo-2b", {}).get("60", {})
    if steps:
        measured = True
        cells = " / ".join(f"{steps[b]:.1f}" for b in ("1", "4", "8") if b in steps)
        print(f"DiT step, 2B, 60 s, batch 1/4/8, {mm} products: {cells} ms")
        vae = m.get("model", {}).get("vae_decode_ms_per_audio_second")
        if vae:
            print(f"VAE decode: {vae:.1f} ms per audio second (10 s)")
        rows = m.get("model", {}).get("row_check", {})
        if rows.get("checked"):
            print(f"rows identical across batch sizes ({mm}): {rows.get('identical')}, "
                  f"{rows.get('differing_values')} differing values in {rows.get('rows_compared')} rows")
prof = load("engine-profile.json")
if prof and prof.get("dit_profile"):
    blocks = sorted(prof["dit_profile"].items(), key=lambda kv: -kv[1]["total_ms"])
    print("largest DiT costs at D = 8 (device-synchronised): " + ", ".join(
        f"{k} {v['mean_ms']:.2f} ms" for k, v in blocks[:5]))
e = load("engine-bf16.json") or {}
tick, gen = e.get("tick_ms", {}), e.get("gen_per_s", {})
demon = {"1": (8.9, 14.0), "4": (11.3, 42.8), "8": (12.3, 81.1)}
print()
print("goal: >= 25 gen/s at D = 8 and tick <= 40 ms at D = 4 (H200, bf16, 60 s songs, 8 steps)")
print(f"{'depth':>5}  {'DEMON (RTX 5090, TensorRT)':<28}{'this run (' + gpu.split(',')[0] + ')':<34}goal")
for d, (dg, dt) in demon.items():
    if d in tick:
        measured = True
        ours = f"{gen[d]:.1f} gen/s, tick {tick[d]:.1f} ms"
    else:
        ours = "not measured" + (" (no CUDA device)" if stub or "no CUDA" in log else "")
    goal = ""
    if d == "4":
        goal = "tick <= 40 ms" + (f": {'met' if tick[d] <= 40 else 'not met'}" if d in tick else "")
    if d == "8":
        goal = ">= 25 gen/s" + (f": {'met' if gen[d] >= 25 else 'not met'}" if d in gen else "")
    print(f"{'D=' + d:>5}  {f'{dg} gen/s, tick {dt} ms':<28}{ours:<34}{goal}")
sys.exit(0 if measured else 2)
PY
rc=$?
failed=0
for k in "${!STATUS[@]}"; do case ${STATUS[$k]} in ok*) ;; *) failed=1 ;; esac; done
if [ "$rc" -eq 2 ]; then exit 2; fi
exit $failed
