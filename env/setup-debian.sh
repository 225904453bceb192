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
  # the several-hosts test (tests/multihost/hosts.sh): an sshd per fake host, started by the test
  # on its own port and config; iproute2 (ip netns, bridge, veth) and util-linux (unshare)
  openssh-server iproute2 util-linux
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
# Installing a daemon's package (openssh-server) starts it on the machine (sshd on port 22)
# unless /usr/sbin/policy-rc.d forbids it (exit 101): put one in place for the install when
# there is none (Docker images have their own, which stays), and remove only ours.
own_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\n# env/setup-debian.sh: no service starts while it installs packages\nexit 101\n' |
    $SUDO tee /usr/sbin/policy-rc.d > /dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  own_policy=1
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
if [ "$own_policy" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
