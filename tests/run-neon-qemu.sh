#!/bin/sh
# Cross-builds libnsa for aarch64 (so the cpu backend gets its NEON
# kernels) and runs make check under qemu-aarch64, on an x86-64 Debian host.
# Needs: gcc-aarch64-linux-gnu qemu-user, and the arm64 test libraries
# through multiarch: dpkg --add-architecture arm64 && apt-get update &&
# apt-get install libcmocka-dev:arm64 libjansson-dev:arm64.
# Built without OpenBLAS and PNG (not needed to test the kernels). The
# build goes to $NSA_NEON_BUILD (default build-aarch64 in the source tree).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${NSA_NEON_BUILD:-$src/build-aarch64}
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "run-neon-qemu: $tool missing (apt-get install gcc-aarch64-linux-gnu qemu-user)" >&2
        exit 77
    }
done
mkdir -p "$build"
if [ -f "$src/config.status" ] && [ -d "$src/.git" -o -f "$src/.git" ]; then
    # an in-tree build blocks VPATH builds: build from a clean copy
    rm -rf "$build/src"
    mkdir -p "$build/src"
    git -C "$src" ls-files -z | (cd "$src" && tar --null -T - -cf -) | tar -C "$build/src" -xf -
    # the tests read ../shared beside the source tree
    [ -d "$src/../shared" ] && ln -sfn "$(cd "$src/../shared" && pwd)" "$build/shared"
    src=$build/src
fi
[ -x "$src/configure" ] || (cd "$src" && autoreconf -fi)
cd "$build"
PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig \
    "$src/configure" --host=aarch64-linux-gnu --without-png --without-openblas \
    ${NSA_NEON_CONFIGURE_FLAGS:-}
make -j2
# the arm64 loader and libraries come from multiarch (/lib/ld-linux-aarch64.so.1)
# or, failing that, from the cross toolchain's sysroot
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
# Emulation is ~20x slower: run the tests that reach the cpu backend's
# kernels, on the NEON set (the scalar set is covered by native runs; the
# kernel test still runs both), one thread (no OpenMP spinning under qemu).
export NSA_TEST_BACKEND=cpu NSA_MAX_ISA=neon OMP_NUM_THREADS=1
make check LOG_COMPILER=qemu-aarch64 \
    TESTS="${NSA_NEON_TESTS:-tests/test_simd tests/test_crosscheck tests/test_conformance}" ||
    { cat test-suite.log; exit 1; }
