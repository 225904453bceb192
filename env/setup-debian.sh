#!/usr/bin/env bash
# Installs every Debian 12 package that saegap's build, tests and analysis/ need.
# Idempotent: when everything is present it only runs dpkg-query and returns.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config
  # MPI, parallel HDF5, ScaLAPACK, BLIS (see docs/dependencies.md)
  libopenmpi-dev openmpi-bin
  libhdf5-openmpi-dev hdf5-tools
  libscalapack-openmpi-dev
  libblis-dev
  # JSON parser for config.json / cfg.json / safetensors headers (job files: src/jobfile.c)
  libcjson-dev
  # XXH3: the job identity hash over gigabytes of weights (checksum.h)
  libxxhash-dev
  # zlib: deflate members of .npz archives (Gemma Scope's params.npz; src/npz.c)
  zlib1g-dev
  # counter-based random streams (Philox)
  librandom123-dev
  # tests and analysis/ (Debian's /usr/bin/python3 only)
  python3 python3-numpy python3-h5py python3-matplotlib python3-pytest python3-regex
  # fuzzing (tests/fuzz/run.sh): clang 14 with libFuzzer and the sanitizer runtimes, LLVM's OpenMP
  clang-14 libclang-rt-14-dev libomp-14-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "env/setup-debian.sh: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "env/setup-debian.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
