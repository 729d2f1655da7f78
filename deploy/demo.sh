#!/usr/bin/env bash
# The README demo: push sample assets, map them to host patterns, pull them, show the result.
# Everything runs on the embedded defaults under ./.demo: a local store and a mappings file.
set -euo pipefail

root="$(pwd)/.demo"
rm -rf "$root"
mkdir -p "$root/build"
export DAYBOOK_DATA_DIR="$root/data"
export DAYBOOK_HOSTNAME="web-prod-1"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# Three sample services with a couple of versions each, built as real tarballs.
for asset in frontend-1.0.0 frontend-1.1.0 api-2.3 api-2.4 worker-7; do
  src="$root/build/$asset"
  mkdir -p "$src/bin" "$src/conf"
  printf '#!/bin/sh\necho "%s"\n' "$asset" > "$src/bin/run"
  chmod +x "$src/bin/run"
  printf 'name = "%s"\n' "$asset" > "$src/conf/app.toml"
  ln -s bin/run "$src/start"
  tar -czf "$root/build/$asset.tar.gz" -C "$src" .
done

step daybook push "$root"/build/*.tar.gz
step daybook assets
step daybook map set 'web-*' frontend
step daybook map set 'web-prod-*' frontend api
step daybook map set 'worker-*' worker
step daybook map list
step daybook map resolve web-prod-1 --explain
step daybook pull
step daybook pull            # a second run downloads nothing
step find "$DAYBOOK_DATA_DIR/install" -maxdepth 2 -mindepth 2 -type d
printf '\nThe demo lives in %s; run it again any time with `make demo`.\n' "$root"
