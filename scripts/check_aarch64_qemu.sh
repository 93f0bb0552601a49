#!/usr/bin/env bash
# Check an aarch64 TVM artifact under qemu-user emulation (x86-64 host).
#
#   scripts/check_aarch64_qemu.sh ARTIFACT_DIR [AARCH64_TVM_LIB_DIR]
#
# Always: (1) the library is an ELF aarch64 shared object; (2) an aarch64 program, cross-compiled
# here, loads it with dlopen under qemu-aarch64 and finds its entry points (the TVM symbols it
# imports stay unresolved: lazy binding). With AARCH64_TVM_LIB_DIR holding an aarch64 build of
# libtvm_ffi.so and libtvm_runtime.so, those are loaded first, so every symbol must resolve.
# This checks loading only. To *run* an aarch64 CPU artifact (`--target aarch64`) under qemu and
# compare its outputs with PyTorch, use scripts/aarch64_qemu_run.sh: it builds an aarch64 sysroot
# (Debian arm64 python3.11 + the manylinux aarch64 wheels of numpy, apache-tvm-ffi and apache-tvm,
# which PyPI does publish) and drives the Relax VM there; that sysroot's site-packages/tvm/lib and
# site-packages/tvm_ffi/lib hold the aarch64 libraries this script's second argument wants. Jetson
# builds (CUDA kernels) still need the board. Needs: g++-aarch64-linux-gnu, qemu-user-static.
set -euo pipefail
ARTIFACT=${1:?usage: $0 ARTIFACT_DIR [AARCH64_TVM_LIB_DIR]}
TVMLIB=${2:-}
command -v aarch64-linux-gnu-gcc >/dev/null || { echo "missing aarch64-linux-gnu-gcc: sudo apt-get install gcc-aarch64-linux-gnu" >&2; exit 2; }
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
[ -n "$QEMU" ] || { echo "missing qemu-aarch64: sudo apt-get install qemu-user-static" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/load.c" <<'C'
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
  for (int i = 2; i < argc; i++)
    if (!dlopen(argv[i], RTLD_NOW | RTLD_GLOBAL)) { printf("FAIL runtime %s\n", dlerror()); return 1; }
  void *lib = dlopen(argv[1], (argc > 2 ? RTLD_NOW : RTLD_LAZY) | RTLD_LOCAL);
  if (!lib) { printf("FAIL %s\n", dlerror()); return 1; }
  /* the packed module blob; __tvm_ffi__library_ctx is exported only by libraries that call
     functions of imported modules, so its absence is not an error */
  if (!dlsym(lib, "__tvm_ffi__library_bin")) { printf("FAIL missing __tvm_ffi__library_bin\n"); return 1; }
  printf("OK loaded %s under aarch64 emulation\n", argv[1]);
  return 0;
}
C
aarch64-linux-gnu-gcc -O2 -o "$WORK/load" "$WORK/load.c" -ldl
status=0
for so in "$ARTIFACT"/*.so; do
  arch=$(readelf -h "$so" | awk -F: '/Machine/ {gsub(/^ +/, "", $2); print $2}')
  echo "$(basename "$so"): $arch"
  case "$arch" in *AArch64*) ;; *) echo "  not an aarch64 library" >&2; status=1; continue ;; esac
  extra=()
  if [ -n "$TVMLIB" ]; then extra=("$TVMLIB/libtvm_ffi.so" "$TVMLIB/libtvm_runtime.so"); fi
  "$QEMU" -L /usr/aarch64-linux-gnu "$WORK/load" "$so" "${extra[@]}" || status=1
done
exit $status
