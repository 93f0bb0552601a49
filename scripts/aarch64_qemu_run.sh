#!/usr/bin/env bash
# Run an aarch64 TVM CPU artifact, or any ONNX artifact, under qemu-user emulation of an aarch64
# CPU and compare it with PyTorch.
#
#   scripts/aarch64_qemu_run.sh [options] ARTIFACT_DIR [REFERENCE.npz]
#   scripts/aarch64_qemu_run.sh [options] --setup-only
#   scripts/aarch64_qemu_run.sh [options] --exec SCRIPT.py [ARGS...]   (any script, sysroot Python)
#
#   --sysroot DIR   aarch64 run environment (created on first use, then reused);
#                   default $EDGESEQ_AARCH64_SYSROOT or ~/.cache/edgeseq/aarch64-sysroot
#   --wheels DIR    take aarch64 wheels found here instead of downloading them
#   --no-setup      fail instead of building a missing or outdated sysroot (never downloads)
#   --cpu MODEL     qemu CPU model (default max: every feature qemu has, e.g. sdot, i8mm, SVE;
#                   cortex-a57 / cortex-a72: plain NEON, no sdot; cortex-a76 / neoverse-n1: sdot,
#                   no i8mm; `qemu-aarch64-static -cpu help` lists them)
#   --steps N       steps to run (default: every step in REFERENCE.npz)
#   --threads N     TVM / ONNX Runtime threads inside the emulated process (default 1)
#   --json          print one JSON object instead of the summary
#   --save OUT.npz  also write the emulated artifact's step outputs (ONNX: teacher-forced outputs
#                   and states)
#   --compare F.npz (ONNX) diff the teacher-forced outputs with another run's --save file
#   --session-config KEY=VALUE  (ONNX, repeatable) another session config entry, for diagnosis
#                   (e.g. mlas.disable_kleidiai=1); not what verification ran
#
# ARTIFACT_DIR is an `edgeseq export --format tvm --target aarch64` folder (CPU code only; the
# Jetson targets' CUDA kernels cannot run under qemu), run by scripts/aarch64_artifact_run.py, or an
# `edgeseq export --format onnx` folder (exported on any host: ONNX graphs are portable), run by
# scripts/aarch64_onnx_run.py through the aarch64 ONNX Runtime wheel (its MLAS NEON/sdot/i8mm
# kernels). Without REFERENCE.npz the artifact's shipped reference stream is checked (the on-device
# self-check). REFERENCE.npz holds seeded inputs, the PyTorch outputs/states for N consecutive steps
# and verification's exactness rule for them; write it on this machine with
#   python scripts/aarch64_reference.py ARTIFACT_DIR -o REFERENCE.npz --steps 32 --batch 2
#
# The sysroot is built without root and without touching the system's dpkg/apt state:
#   * arm64 .debs of Debian bookworm (glibc, libstdc++, python3.11 and the few libraries it loads),
#     fetched by `apt-get download` with a private apt configuration inside the sysroot and
#     unpacked with `dpkg-deb -x`;
#   * the manylinux aarch64 wheels of numpy, apache-tvm-ffi, apache-tvm and onnxruntime from PyPI,
#     unzipped into SYSROOT/site-packages (from apache-tvm only tvm/lib/libtvm_runtime.so is kept:
#     the runner drives the Relax VM through tvm_ffi, as a device without TVM's compiler would;
#     from onnxruntime its bindings, onnxruntime/capi).
# Then the runner (numpy + the runtime; no torch, no edgeseq) runs inside
# `qemu-aarch64-static -cpu MODEL -L SYSROOT/.cpu/MODEL SYSROOT/usr/bin/python3.11`, where
# SYSROOT/.cpu/MODEL links to the sysroot's folders and adds proc/cpuinfo naming MODEL (qemu-user
# opens PREFIX/<path> for a guest's absolute <path> when it exists): qemu 7.2 shows the guest the
# host's x86 /proc/cpuinfo, on which ONNX Runtime's CPU detection (pytorch/cpuinfo) finds no ARM
# processor and crashes at import. The CPU's features themselves come from the hwcaps qemu reports
# for MODEL (getauxval), which is what cpuinfo reads; the file carries the model's MIDR.
# Needs: qemu-user-static, apt-get + dpkg-deb (Debian), pip and unzip-capable python3 on the host.
set -euo pipefail

SYSROOT=${EDGESEQ_AARCH64_SYSROOT:-$HOME/.cache/edgeseq/aarch64-sysroot}
WHEELS=""
STEPS=""
THREADS=1
JSON=""
SAVE=""
SETUP_ONLY=""
NO_SETUP=""
CPU=max
COMPARE=""
SESSION_CONFIG=()
EXEC=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sysroot) SYSROOT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    --save) SAVE=$2; shift 2 ;;
    --cpu) CPU=$2; shift 2 ;;
    --compare) COMPARE=$2; shift 2 ;;
    --session-config) SESSION_CONFIG+=(--session-config "$2"); shift 2 ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    --exec) EXEC=1; shift; ARGS+=("$@"); break ;;
    --no-setup) NO_SETUP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -z "$SETUP_ONLY" ] && [ -z "$EXEC" ] && { [ ${#ARGS[@]} -lt 1 ] || [ ${#ARGS[@]} -gt 2 ]; }; then
  echo "usage: $0 [--sysroot DIR] [--wheels DIR] [--cpu MODEL] [--steps N] [--threads N] [--json] [--save OUT.npz] [--compare F.npz] ARTIFACT_DIR [REFERENCE.npz]" >&2
  exit 2
fi

# versions of the aarch64 Python packages (the TVM runtime must match the TVM that built the artifact)
TVM_VERSION=${EDGESEQ_AARCH64_TVM_VERSION:-0.27.0.post1}
TVM_FFI_VERSION=${EDGESEQ_AARCH64_TVM_FFI_VERSION:-0.1.15.post2}
NUMPY_VERSION=${EDGESEQ_AARCH64_NUMPY_VERSION:-2.4.6}
# ONNX Runtime: the version that verified the artifacts on the host (its MLAS aarch64 kernels are
# what scripts/aarch64_onnx_run.py exercises); it imports only numpy when a session is opened
ORT_VERSION=${EDGESEQ_AARCH64_ORT_VERSION:-1.32.0}
TYPING_EXTENSIONS_VERSION=4.15.0  # pure Python; tvm_ffi imports it
DEBIAN_SUITE=bookworm
PYVER=3.11
DEBS=(libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5 libcrypt1 libuuid1
      python$PYVER-minimal libpython$PYVER-minimal libpython$PYVER-stdlib)
STAMP="debian=$DEBIAN_SUITE python=$PYVER numpy=$NUMPY_VERSION tvm-ffi=$TVM_FFI_VERSION tvm=$TVM_VERSION typing-extensions=$TYPING_EXTENSIONS_VERSION onnxruntime=$ORT_VERSION"

SYSROOT=$(realpath -m "$SYSROOT")
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
[ -n "$QEMU" ] || { echo "missing qemu-aarch64: sudo apt-get install qemu-user-static" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
SITE="$SYSROOT/site-packages"

say() { [ -n "$JSON" ] && echo "[aarch64] $*" >&2 || echo "[aarch64] $*"; }

fetch_debs() {
  local apt="$SYSROOT/.apt"
  mkdir -p "$apt/etc" "$apt/state/lists/partial" "$apt/cache/archives/partial" "$SYSROOT/.debs"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  cat > "$apt/etc/sources.list" <<EOF
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian $DEBIAN_SUITE main
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian $DEBIAN_SUITE-updates main
deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian-security $DEBIAN_SUITE-security main
EOF
  # a private apt: its own sources, lists and cache; an empty dpkg status (nothing "installed")
  local opts=(-o "Dir::Etc::SourceList=$apt/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State=$apt/state" -o Dir::State::status=/dev/null -o "Dir::Cache=$apt/cache"
              -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1)
  # as root, apt would hand downloads to its _apt user, who may not be able to write into $SYSROOT
  if [ "$(id -u)" = 0 ]; then opts+=(-o APT::Sandbox::User=root); fi
  say "apt-get update (arm64 package lists of Debian $DEBIAN_SUITE, private to $apt)"
  apt-get "${opts[@]}" -qq update
  say "apt-get download ${DEBS[*]}"
  (cd "$SYSROOT/.debs" && apt-get "${opts[@]}" -qq download "${DEBS[@]/%/:arm64}")
  for deb in "$SYSROOT"/.debs/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
  rm -rf "$SYSROOT/.debs" "$apt/cache" "$apt/state/lists"
}

find_wheel() {  # find_wheel DIR NAME VERSION: an aarch64 or pure-Python wheel there
  local stem="${2//-/_}-$3-"
  [ -d "$1" ] || return 0
  { find "$1" -maxdepth 1 -name "$stem*aarch64*.whl"; find "$1" -maxdepth 1 -name "$stem*-none-any.whl"; } | head -n1
}

wheel() {  # wheel NAME VERSION -> path of its aarch64 cp311 (or pure) wheel, downloaded when not in --wheels
  local dist=$1 version=$2 file=""
  if [ -n "$WHEELS" ]; then file=$(find_wheel "$WHEELS" "$dist" "$version"); fi
  if [ -z "$file" ]; then
    mkdir -p "$SYSROOT/.wheels"
    python3 -m pip download -q "$dist==$version" --platform manylinux_2_28_aarch64 --only-binary=:all: \
      --no-deps --python-version $PYVER --implementation cp --abi cp${PYVER/./} -d "$SYSROOT/.wheels" >&2
    file=$(find_wheel "$SYSROOT/.wheels" "$dist" "$version")
  fi
  [ -n "$file" ] || { echo "no aarch64 wheel of $dist $version" >&2; exit 1; }
  echo "$file"
}

unzip_into() {  # unzip_into WHEEL DEST [MEMBER_PREFIX...]
  python3 - "$@" <<'PY'
import sys, zipfile
wheel, dest, prefixes = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not prefixes or info.filename.startswith(prefixes):
            path = z.extract(info, dest)
            mode = info.external_attr >> 16
            if mode:
                import os
                os.chmod(path, mode & 0o777)
PY
}

setup_sysroot() {
  if [ -f "$SYSROOT/.edgeseq-sysroot" ] && [ "$(cat "$SYSROOT/.edgeseq-sysroot")" = "$STAMP" ]; then return; fi
  if [ -n "$NO_SETUP" ]; then
    echo "$SYSROOT is not a ready aarch64 sysroot for: $STAMP (run $0 --setup-only --sysroot $SYSROOT)" >&2
    exit 2
  fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "needs apt-get and dpkg-deb (Debian/Ubuntu host)" >&2; exit 2; }
  say "building the aarch64 sysroot in $SYSROOT ($STAMP)"
  if [ -d "$SYSROOT" ] && [ -n "$(ls -A "$SYSROOT")" ] && [ ! -e "$SYSROOT/.edgeseq-sysroot" ] && [ ! -e "$SYSROOT/.edgeseq-sysroot-partial" ]; then
    echo "$SYSROOT exists and is not an edgeseq sysroot; name an empty or new folder" >&2
    exit 2
  fi
  rm -rf "$SYSROOT"
  mkdir -p "$SYSROOT" "$SITE"
  touch "$SYSROOT/.edgeseq-sysroot-partial"
  fetch_debs
  say "aarch64 wheels: numpy $NUMPY_VERSION, apache-tvm-ffi $TVM_FFI_VERSION, apache-tvm $TVM_VERSION (runtime library only)"
  unzip_into "$(wheel numpy "$NUMPY_VERSION")" "$SITE"
  unzip_into "$(wheel apache-tvm-ffi "$TVM_FFI_VERSION")" "$SITE"
  unzip_into "$(wheel typing-extensions "$TYPING_EXTENSIONS_VERSION")" "$SITE"
  unzip_into "$(wheel apache-tvm "$TVM_VERSION")" "$SITE" tvm/lib/libtvm_runtime.so "apache_tvm-$TVM_VERSION.dist-info/"
  say "aarch64 wheel: onnxruntime $ORT_VERSION (its Python bindings and MLAS kernels; not its tools)"
  unzip_into "$(wheel onnxruntime "$ORT_VERSION")" "$SITE" onnxruntime/__init__.py onnxruntime/capi/ "onnxruntime-$ORT_VERSION.dist-info/"
  rm -rf "$SYSROOT/.wheels"
  # one folder with both aarch64 TVM libraries (what scripts/check_aarch64_qemu.sh's second argument wants)
  ln -sf ../../tvm_ffi/lib/libtvm_ffi.so "$SITE/tvm/lib/libtvm_ffi.so"
  [ -x "$SYSROOT/usr/bin/python$PYVER" ] || { echo "sysroot has no python$PYVER" >&2; exit 1; }
  fake_cpuinfo  # before the first import of onnxruntime
  # byte-compile the Python packages once, in the emulated interpreter (later starts are faster)
  run_python -m compileall -q -j 0 "$SYSROOT/usr/lib/python$PYVER" "$SITE" >/dev/null 2>&1 || true
  run_python -c "import numpy, tvm_ffi; import onnxruntime; print('sysroot python', __import__('sys').version.split()[0], 'numpy', numpy.__version__, 'tvm_ffi', tvm_ffi.__version__, 'onnxruntime', onnxruntime.__version__)" >&2
  echo "$STAMP" > "$SYSROOT/.edgeseq-sysroot"
  rm -f "$SYSROOT/.edgeseq-sysroot-partial"
  say "sysroot ready: $(du -sh "$SYSROOT" | cut -f1)"
}

run_python() {  # the sysroot's python3.11 under qemu, seeing only the sysroot's packages
  env -i PATH=/usr/bin:/bin HOME="${HOME:-/tmp}" PYTHONHOME="$SYSROOT/usr" PYTHONPATH="$SITE" PYTHONNOUSERSITE=1 \
    TVM_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS=1 \
    "$QEMU" -cpu "$CPU" -L "$SYSROOT/.cpu/$CPU" "$SYSROOT/usr/bin/python$PYVER" -S "$@"
}

fake_cpuinfo() {  # SYSROOT/.cpu/$CPU: the sysroot plus a proc/cpuinfo naming qemu's CPU model $CPU (its MIDR)
  local midr
  case "$CPU" in
    max) midr=0x000f0510 ;;  # qemu's own: implementer 0 (software), part 'Q'
    cortex-a35) midr=0x410fd040 ;; cortex-a53) midr=0x410fd034 ;; cortex-a57) midr=0x411fd070 ;;
    cortex-a72) midr=0x410fd083 ;; cortex-a76) midr=0x414fd0b1 ;; neoverse-n1) midr=0x414fd0c1 ;;
    a64fx) midr=0x461f0010 ;;
    *) echo "no MIDR known for -cpu $CPU (max, cortex-a35/a53/a57/a72/a76, neoverse-n1, a64fx)" >&2; exit 2 ;;
  esac
  local view="$SYSROOT/.cpu/$CPU" entry
  mkdir -p "$view/proc"
  for entry in "$SYSROOT"/*; do
    [ "$(basename "$entry")" = proc ] || ln -sfn "../../$(basename "$entry")" "$view/$(basename "$entry")"
  done
  python3 - "$midr" "$(nproc)" > "$view/proc/cpuinfo.$$" <<'PY'
import sys
midr, n = int(sys.argv[1], 16), int(sys.argv[2])
for i in range(n):
    print(f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd cpuid\nCPU implementer\t: 0x{midr >> 24 & 0xff:02x}\n"
          f"CPU architecture: 8\nCPU variant\t: 0x{midr >> 20 & 0xf:x}\nCPU part\t: 0x{midr >> 4 & 0xfff:03x}\n"
          f"CPU revision\t: {midr & 0xf}\n")
PY
  mv "$view/proc/cpuinfo.$$" "$view/proc/cpuinfo"
}

setup_sysroot
fake_cpuinfo
[ -n "$SETUP_ONLY" ] && exit 0
if [ -n "$EXEC" ]; then run_python "${ARGS[@]}"; exit $?; fi

ARTIFACT=${ARGS[0]}
FORMAT=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("format", ""))' "$ARTIFACT/manifest.json" 2>/dev/null || true)
[ -n "$FORMAT" ] || { echo "$ARTIFACT: no readable manifest.json" >&2; exit 2; }
extra=()
[ -n "$STEPS" ] && extra+=(--steps "$STEPS")
[ -n "$JSON" ] && extra+=(--json)
[ -n "$SAVE" ] && extra+=(--save "$SAVE")
if [ "$FORMAT" = onnx ]; then
  runner=aarch64_onnx_run.py
  extra+=(--threads "$THREADS")
  [ -n "$COMPARE" ] && extra+=(--compare "$COMPARE")
  extra+=("${SESSION_CONFIG[@]}")
else
  runner=aarch64_artifact_run.py
  extra+=(--tvm-lib-dir "$SITE/tvm/lib")
  [ -n "$COMPARE" ] && { echo "--compare is for ONNX artifacts" >&2; exit 2; }
fi
say "running $ARTIFACT ($FORMAT) under $(basename "$QEMU") -cpu $CPU (sysroot $SYSROOT, $THREADS thread(s))"
start=$(date +%s.%N)
status=0
run_python "$HERE/$runner" "${ARGS[@]}" "${extra[@]}" || status=$?
say "emulated process wall time $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s"
exit $status
