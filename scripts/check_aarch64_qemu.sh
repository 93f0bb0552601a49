#!/usr/bin/env bash
# Check an aarch64 TVM artifact under qemu-user emulation (x86-64 host).
#
#   scripts/check_aarch64_qemu.sh ARTIFACT_DIR [AARCH64_TVM_LIB_DIR]
#
# Always: (1) the library is an ELF aarch64 shared object; (2) an aarch64 program, cross-compiled
# here, loads it with dlopen under qemu-aarch64 and finds its entry points (the TVM symbols it
# imports stay unresolved: lazy binding). With AARCH64_TVM_LIB_DIR holding an aarch64 build of
# libtvm_ffi.so and libtvm_runtime.so, those are loaded first, so every symbol must resolve.
# Running the Relax VM itself needs that aarch64 TVM runtime plus an aarch64 driver (Python with
# tvm_ffi, or C++): PyPI's apache-tvm wheels used here are x86-64 only, so that step is left to a
# machine with an aarch64 TVM runtime (the Jetson itself). Needs: g++-aarch64-linux-gnu,
# qemu-user-static (Debian packages).
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
  const char *names[] = {"__tvm_ffi__library_bin", "__tvm_ffi__library_ctx", 0};
  for (int i = 0; names[i]; i++) {
    if (!dlsym(lib, names[i])) { printf("FAIL missing %s\n", names[i]); return 1; }
  }
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
