#!/usr/bin/env bash
# Installs what bench/torch_loop.py needs on Debian 12 (the PyTorch hooks loop of issue 14):
# Debian's python3-torch (apt-get only; no PyPI), h5py/numpy, and an optimised BLAS behind
# libblas.so.3. Debian's torch does its float32 GEMMs through whatever libblas.so.3 points at;
# the reference BLAS (netlib) would make the comparison meaningless, so this script selects
# BLIS (OpenMP build, the BLAS saegap itself uses here) or, failing that, OpenBLAS (pthreads).
# Idempotent: when everything is present and selected it only runs dpkg-query and
# update-alternatives --query, and returns.
#   Usage: bash env/setup-bench-debian.sh
set -euo pipefail

PACKAGES=(
  python3 python3-numpy python3-h5py
  python3-torch
  # BLIS with OpenMP threads: the libblas.so.3 alternative selected below
  libblis4-openmp
)

ARCH=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
ALT="libblas.so.3-$ARCH"
# preferred alternatives, best first
CANDIDATES=(
  "/usr/lib/$ARCH/blis-openmp/libblas.so.3"
  "/usr/lib/$ARCH/openblas-pthread/libblas.so.3"
  "/usr/lib/$ARCH/blis-pthread/libblas.so.3"
  "/usr/lib/$ARCH/openblas-openmp/libblas.so.3"
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "env/setup-bench-debian.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

current=$(update-alternatives --query "$ALT" 2>/dev/null | sed -n 's/^Value: //p')
choice=""
for c in "${CANDIDATES[@]}"; do
  if [ -e "$c" ]; then choice=$c; break; fi
done
if [ -z "$choice" ]; then
  echo "env/setup-bench-debian.sh: no BLIS or OpenBLAS libblas.so.3 found" >&2
  exit 1
fi
case "$current" in
  */blis-*/libblas.so.3 | */openblas-*/libblas.so.3)
    echo "env/setup-bench-debian.sh: packages present; libblas.so.3 -> $current" ;;
  *)
    echo "env/setup-bench-debian.sh: libblas.so.3 -> $choice (was: ${current:-unset})"
    $SUDO update-alternatives --set "$ALT" "$choice" ;;
esac
