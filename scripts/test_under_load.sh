#!/usr/bin/env bash
# `make test` N times in a row on a fresh clone of HEAD while a busy loop loads every core: the suite
# must not depend on a quiet host. Prints one line per run and exits non-zero on the first failure.
set -euo pipefail
runs=${1:-5}
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d -t edgec-under-load.XXXXXX)
loops=()
cleanup() {
  for pid in "${loops[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
git clone -q "$repo" "$work/edgec"
cd "$work/edgec"
echo "clone of $(git rev-parse --short HEAD) in $work/edgec; $(nproc) busy loops"
for _ in $(seq "$(nproc)"); do python3 -c "while True: pass" & loops+=($!); done
for i in $(seq "$runs"); do
  start=$(date +%s)
  if make test > "$work/run-$i.log" 2>&1; then
    echo "run $i: $(tail -n 1 "$work/run-$i.log") ($(( $(date +%s) - start )) s)"
  else
    tail -n 40 "$work/run-$i.log"
    echo "run $i: FAILED ($(( $(date +%s) - start )) s)"
    exit 1
  fi
done
