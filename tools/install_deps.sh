#!/usr/bin/env bash
# Install what ampkit's build, tests and demo need and is missing: Debian packages with apt, Python
# test peers with pip (into the `python3` first on PATH, or $PYTHON). Shared by tools/test.sh and
# tools/demo.sh. Environment: PYTHON (default python3), AMPKIT_PIP_PEERS (default "numpy pycocotools
# tensorboard safetensors"; empty: skip pip). Prints what it installs; silent when nothing is missing.
set -euo pipefail
log() { printf '\n== %s\n' "$*"; }

apt_pkgs=(cmake ninja-build meson g++ pkg-config python3 libeigen3-dev doctest-dev libstb-dev
          nlohmann-json3-dev libtomlplusplus-dev libcli11-dev)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing with apt: ${missing[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
peers=${AMPKIT_PIP_PEERS-numpy pycocotools tensorboard safetensors}
need=()
for m in $peers; do "$PY" -c "import $m" 2>/dev/null || need+=("$m"); done
if ((${#need[@]})); then
  log "installing Python test peers with pip: ${need[*]}"
  # A missing peer only skips its test (exit 77), so a failed pip install is not fatal.
  "$PY" -m pip install -q "${need[@]}" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
