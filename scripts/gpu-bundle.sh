#!/usr/bin/env bash
# Build the CUDA bundle that scripts/gpu-run.sh runs on a GPU machine with no Rust toolchain and
# no network (issue #14). Runs on a CPU machine with no GPU and no system CUDA toolkit:
#
#   scripts/gpu-bundle.sh [BUNDLE_DIR]        # default BUNDLE_DIR: <repo>/gpu-bundle (git-ignored)
#
# What it does:
# 1. installs NVIDIA's CUDA 13.0 toolkit from PyPI into a venv (`cuda-toolkit[nvcc,...]==13.0.2`:
#    only the CUDA 13 wheels hold nvcc; nvcc 13.0 writes PTX ISA 9.0, which a 580 driver loads,
#    where a newer nvcc's PTX would be refused) and lays it out as a CUDA root;
# 2. makes a link-time stub `libcuda.so.1` from the driver entry points cudarc declares (the
#    wheels carry no driver; the real one is the GPU machine's);
# 3. builds, in ONE cargo command (candle's kernels are compiled again for every different
#    feature resolution), the `demon` binary and demon-acestep's GPU test binary (tests/gpu.rs)
#    with `--features cuda` and the default features otherwise (no ALSA-backed features: the GPU
#    machine may have no libasound), for compute capability $CUDA_COMPUTE_CAP (default 90 =
#    H100/H200; there is no GPU here to ask);
# 4. strips and gzips both into BUNDLE_DIR with the stub and a manifest (git commit, toolkit
#    version, compute capability, the libraries each binary needs, sizes, sha256 checksums), and
#    checks the bundle: under 40 MiB, no libasound, `demon --version` runs with the stub.
#
# Environment:
#   DEMON_CUDA_WORK       toolkit venv, CUDA root, stub and cargo target dir (default
#                         ${XDG_CACHE_HOME:-$HOME/.cache}/demon-cuda); keep it outside the repository
#   CUDA_COMPUTE_CAP      default 90
#   CUDA_TOOLKIT_VERSION  default 13.0.2 (nvcc 13.0.88)
#   GPU_BUNDLE_CLEAN=1    delete the cargo target dir after bundling (frees several GB; the next
#                         build then compiles candle's kernels again)
#   GPU_BUNDLE_NICE       niceness of the build (default 10)
#
# Binaries are never committed: BUNDLE_DIR is git-ignored (`/gpu-bundle/` in .gitignore).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=${1:-$REPO/gpu-bundle}
WORK=${DEMON_CUDA_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/demon-cuda}
CAP=${CUDA_COMPUTE_CAP:-90}
TOOLKIT=${CUDA_TOOLKIT_VERSION:-13.0.2}
NICE=${GPU_BUNDLE_NICE:-10}
LIMIT_MIB=40
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
case "$WORK/" in
"$REPO"/*) echo "error: DEMON_CUDA_WORK ($WORK) must be outside the repository" >&2; exit 2 ;;
esac
say() { printf '== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
started=$(date +%s)

# 1. The toolkit, into a venv (about 1.2 GB installed).
say "CUDA toolkit $TOOLKIT from PyPI into $WORK/venv"
[ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check \
    "cuda-toolkit[nvcc,nvvm,crt,cudart,cublas,curand,nvrtc,cccl]==$TOOLKIT"
NV=$("$WORK/venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
[ -x "$NV/bin/nvcc" ] || die "no nvcc in $NV/bin after installing cuda-toolkit==$TOOLKIT"

# A CUDA root in the usual layout: bin/ include/ nvvm/ from the wheels, lib64/ with unversioned
# .so links (for -lcublas ...) and lib64/stubs/libcuda.so.
C="$WORK/cuda"
rm -rf "$C"
mkdir -p "$C/lib64/stubs"
ln -s "$NV/bin" "$C/bin"
ln -s "$NV/include" "$C/include"
ln -s "$NV/nvvm" "$C/nvvm"
for l in "$NV"/lib/lib*.so.*; do
    b=$(basename "$l")
    ln -s "$l" "$C/lib64/$b"
    n=${b%%.so.*}
    [ -e "$C/lib64/$n.so" ] || ln -s "$b" "$C/lib64/$n.so"
done
export PATH="$C/bin:$PATH" CUDA_HOME="$C" CUDA_PATH="$C" CUDA_COMPUTE_CAP="$CAP"
NVCC_VERSION=$(nvcc --version | sed -n 's/.*release \([0-9.]*\), V\([0-9.]*\).*/\2/p')
say "nvcc $NVCC_VERSION, compute capability $CAP"

# 2. The driver stub: every cu* entry point of cudarc's driver bindings, each returning
#    CUDA_ERROR_STUB_LIBRARY (34). Enough to link, and to start the binaries without a driver.
cd "$REPO"
cargo fetch --locked -q
CUDARC_DIR=$(cargo metadata --locked --format-version 1 --features demon-cli/cuda 2>/dev/null |
    python3 -c 'import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"))')
[ -f "$CUDARC_DIR/src/driver/sys/mod.rs" ] || die "cudarc's driver bindings not found in $CUDARC_DIR"
{
    echo '/* link-time stub of the CUDA driver: every entry returns CUDA_ERROR_STUB_LIBRARY (34) */'
    grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC_DIR/src/driver/sys/mod.rs" |
        awk '{print $4}' | sort -u | sed 's/.*/int &(void) { return 34; }/'
} >"$WORK/libcuda-stub.c"
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$C/lib64/stubs/libcuda.so" "$WORK/libcuda-stub.c"
mkdir -p "$WORK/stub"
cp "$C/lib64/stubs/libcuda.so" "$WORK/stub/libcuda.so.1"

# 3. The build: one cargo command for both binaries.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$WORK/target}
say "cargo build (release, --features cuda, target dir $CARGO_TARGET_DIR; nvcc takes most of it)"
build_started=$(date +%s)
nice -n "$NICE" cargo build --release --locked \
    -p demon-cli -p demon-acestep --features demon-cli/cuda,demon-acestep/cuda \
    --bin demon --test gpu --message-format=json-render-diagnostics >"$WORK/artifacts.jsonl"
build_s=$(($(date +%s) - build_started))
exe() {
    python3 -c 'import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[2] and m.get("executable"):
        print(m["executable"])' "$WORK/artifacts.jsonl" "$1" | tail -1
}
DEMON=$(exe demon)
TESTS=$(exe gpu)
[ -x "$DEMON" ] && [ -x "$TESTS" ] || die "the build did not report both executables"

# 4. The bundle.
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' '; }
for b in "$DEMON" "$TESTS"; do
    case " $(needed "$b") " in
    *" libasound.so"*) die "$(basename "$b") links libasound (ALSA): build without the ALSA-backed features (the GPU machine may have no libasound)" ;;
    esac
done
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
strip --strip-all -o "$WORK/demon" "$DEMON"
strip --strip-all -o "$WORK/gpu-tests" "$TESTS"
gzip -9 -c "$WORK/demon" >"$BUNDLE/demon.gz"
gzip -9 -c "$WORK/gpu-tests" >"$BUNDLE/gpu-tests.gz"
cp "$WORK/stub/libcuda.so.1" "$BUNDLE/libcuda-stub.so.1"

# The stripped binary runs here with the stub (and the toolkit's cuBLAS, cuRAND, cudart); without
# any libcuda.so.1 the dynamic loader refuses it before main (exit 127).
version=$(LD_LIBRARY_PATH="$WORK/stub:$NV/lib" "$WORK/demon" --version) ||
    die "the bundled demon does not start with the stub libcuda"
set +e
env -u LD_LIBRARY_PATH "$WORK/demon" --version >/dev/null 2>&1
no_driver_rc=$?
set -e
say "$version runs with the stub; without libcuda.so.1 the loader exits $no_driver_rc before main"

commit=$(git -C "$REPO" rev-parse HEAD)
dirty=false
[ -z "$(git -C "$REPO" status --porcelain --untracked-files=no)" ] || dirty=true
python3 - "$BUNDLE" "$WORK" "$commit" "$dirty" "$NVCC_VERSION" "$TOOLKIT" "$CAP" "$version" \
    "$(needed "$DEMON")" "$(needed "$TESTS")" "$build_s" "$LIMIT_MIB" <<'PY'
import hashlib, json, os, platform, sys, time
(bundle, work, commit, dirty, nvcc, toolkit, cap, version, need_demon, need_tests, build_s,
 limit) = sys.argv[1:]
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
files = {}
for name, raw, needs in [("demon", "demon", need_demon), ("gpu-tests", "gpu-tests", need_tests)]:
    gz = os.path.join(bundle, name + ".gz")
    files[name] = {
        "file": name + ".gz",
        "compressed_bytes": os.path.getsize(gz),
        "compressed_sha256": sha(gz),
        "stripped_bytes": os.path.getsize(os.path.join(work, raw)),
        "sha256": sha(os.path.join(work, raw)),
        "needed": needs.split(),
    }
stub = os.path.join(bundle, "libcuda-stub.so.1")
files["libcuda-stub"] = {"file": "libcuda-stub.so.1", "compressed_bytes": os.path.getsize(stub),
                         "sha256": sha(stub)}
total = sum(os.path.getsize(os.path.join(bundle, f)) for f in os.listdir(bundle))
manifest = {
    "what": "DEMON CUDA bundle (scripts/gpu-bundle.sh); run with scripts/gpu-run.sh",
    "git_commit": commit,
    "git_dirty": dirty == "true",
    "version": version,
    "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "build_host": platform.node(),
    "build_seconds": int(build_s),
    "cuda_toolkit": toolkit,
    "nvcc": nvcc,
    "compute_capability": cap,
    "cargo_features": "demon-cli/cuda (default features otherwise)",
    "files": files,
    "bundle_bytes": total,
}
json.dump(manifest, open(os.path.join(bundle, "manifest.json"), "w"), indent=2)
mib = total / 2**20
print(f"== bundle {bundle}: {mib:.1f} MiB (" + ", ".join(
    f"{k} {v['compressed_bytes'] / 2**20:.1f}" for k, v in files.items()) + " MiB)")
if mib >= float(limit):
    sys.exit(f"error: the bundle is {mib:.1f} MiB, over the {limit} MiB limit")
PY
rm -f "$WORK/demon" "$WORK/gpu-tests"
if [ -n "${GPU_BUNDLE_CLEAN:-}" ]; then
    say "deleting the target dir $CARGO_TARGET_DIR"
    rm -rf "$CARGO_TARGET_DIR"
fi
say "done in $(($(date +%s) - started)) s (cargo build $build_s s); run it with scripts/gpu-run.sh"
