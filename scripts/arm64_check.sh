#!/usr/bin/env bash
# arm64 parity check: run android-arm64 bundles' model.ort in the Linux aarch64 onnxruntime wheel under
# qemu-user emulation (a debootstrapped Debian bookworm arm64 root) and compare its outputs with the host's.
#
# Usage (root, Debian): scripts/arm64_check.sh [--setup-only] [OUT_DIR]
#   EDGEC_ARM64_ROOT  where the arm64 root lives (default .cache/arm64root; reused between runs)
#   EDGEC_ARM64_MODELS  zoo models to check (default "mobilenetv2 bert-like")
# First run: about 5-6 minutes of setup (debootstrap's second stage runs dpkg under emulation).
# Writes OUT_DIR/arm64_check.json and prints the max error per output; exits 1 if any output is off.
set -euo pipefail

cd "$(dirname "$0")/.."
SETUP_ONLY=0
if [[ "${1:-}" == "--setup-only" ]]; then SETUP_ONLY=1; shift; fi
OUT=${1:-.cache/arm64-check}
ROOT=${EDGEC_ARM64_ROOT:-$PWD/.cache/arm64root}
MODELS=${EDGEC_ARM64_MODELS:-"mobilenetv2 bert-like"}
PY=${PY:-.venv/bin/python}
ORT_VERSION=$($PY -c "import onnxruntime; print(onnxruntime.__version__)")
MIRROR=${EDGEC_DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ $(id -u) -ne 0 ]]; then
  echo "arm64_check: needs root (binfmt_misc, debootstrap, chroot)" >&2; exit 2
fi

need_pkgs=()
command -v qemu-aarch64-static >/dev/null || need_pkgs+=(qemu-user-static)
command -v update-binfmts >/dev/null || need_pkgs+=(binfmt-support)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
if (( ${#need_pkgs[@]} )); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
fi

# binfmt_misc is not mounted by default in some VMs; the F flag lets the chroot run arm64 binaries
# without a qemu copy inside it.
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true

if [[ ! -x "$ROOT/opt/venv/bin/python" ]]; then
  echo "arm64_check: building the arm64 root in $ROOT (minutes)" >&2
  rm -rf "$ROOT" && mkdir -p "$ROOT"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT" "$MIRROR"
  chroot "$ROOT" /debootstrap/debootstrap --second-stage
  mkdir -p "$ROOT/opt/whl"
  $PY -m pip download -q --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
    --python-version 3.11 --only-binary=:all: -d "$ROOT/opt/whl" "onnxruntime==$ORT_VERSION" numpy
  mount -t proc proc "$ROOT/proc"
  trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
  chroot "$ROOT" sh -c "python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index \
    --find-links /opt/whl onnxruntime numpy"
  umount "$ROOT/proc"; trap - EXIT
fi
if (( SETUP_ONLY )); then echo "arm64_check: root ready at $ROOT"; exit 0; fi

# Never bind-mount /sys into the root: ORT then crashes under qemu (SIGSEGV while reading cpu topology).
mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
$PY scripts/arm64_check.py --root "$ROOT" --out "$OUT" $MODELS
