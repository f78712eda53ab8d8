# Cross-compiling the app runtime for AArch64 Linux on an x86-64 Debian host (run under qemu-aarch64):
# Debian's gcc-aarch64-linux-gnu, and ICU/OpenSSL/libpng from the arm64 architecture of the same
# release (dpkg --add-architecture arm64). ExecuTorch comes from its manylinux aarch64 wheel, given
# as CMAKE_PREFIX_PATH. See docs/app-runtime.md.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# Libraries and headers from the target's sysroot paths only; programs (cmake, ninja) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
