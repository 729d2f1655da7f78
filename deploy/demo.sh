#!/usr/bin/env bash
# The README demo: a local fleet on the embedded defaults. A master and three minions with
# different host names run on this machine and share a local store and mappings file
# (standing in for S3 and Consul); we push assets, map them, sync, and watch a new asset
# reach the minions with no operator. Everything lives under ./.demo.
set -euo pipefail

root="$(pwd)/.demo"
rm -rf "$root"
mkdir -p "$root/build" "$root/logs"
export DAYBOOK_STORE="file://$root/store"
export DAYBOOK_REGISTRY="file://$root/mappings.json"
export DAYBOOK_MASTER=127.0.0.1
hosts=(web-prod-1 web-staging-1 worker-1)
pids=()

stop_fleet() {
  if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_fleet EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

make_asset() {  # NAME-VERSION: a small real service tree, as a tarball in build/
  local src="$root/build/$1"
  mkdir -p "$src/bin" "$src/conf"
  printf '#!/bin/sh\necho "%s"\n' "$1" > "$src/bin/run"
  chmod +x "$src/bin/run"
  printf 'name = "%s"\n' "$1" > "$src/conf/app.toml"
  ln -s bin/run "$src/start"
  tar -czf "$root/build/$1.tar.gz" -C "$src" .
}

wait_for() {  # DESCRIPTION SECONDS COMMAND...: poll a condition until a deadline
  local what="$1" deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "timed out waiting for $what" >&2; exit 1; fi
    sleep 0.1
  done
}

# The master binds free ports (port 0) and writes them to its data dir; a trial fleet
# accepts every minion key automatically (review keys with `daybook keys` in production).
DAYBOOK_DATA_DIR="$root/master" DAYBOOK_PORT=0 DAYBOOK_AUTO_ACCEPT=1 \
  daybook master >"$root/logs/master.log" 2>&1 &
pids+=($!)
wait_for "the master" 15 test -s "$root/master/master.json"
port() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"][sys.argv[2]])' \
  "$root/master/master.json" "$1"; }
# Minions learn the master's public key from its key port on first contact, and pin it.
export DAYBOOK_PORT="$(port publish)" DAYBOOK_RESULTS_PORT="$(port results)" \
  DAYBOOK_CONTROL_PORT="$(port control)" DAYBOOK_KEY_PORT="$(port key)"
echo "master up: publish $DAYBOOK_PORT, results $DAYBOOK_RESULTS_PORT, control $DAYBOOK_CONTROL_PORT"

for host in "${hosts[@]}"; do
  DAYBOOK_DATA_DIR="$root/minions/$host" DAYBOOK_HOSTNAME="$host" \
    daybook minion >"$root/logs/$host.log" 2>&1 &
  pids+=($!)
done
# The operator works on the master's host, through the master's owner-only local socket.
export DAYBOOK_DATA_DIR="$root/master"
all_up() { [ "$(daybook status --json | python3 -c \
  'import json,sys; print(sum(h["up"] for h in json.load(sys.stdin)["hosts"].values()))')" = 3 ]; }
wait_for "three minions" 30 all_up

for asset in frontend-1.0.0 frontend-1.1.0 api-2.3 api-2.4 worker-7; do make_asset "$asset"; done
step daybook push "$root"/build/*.tar.gz
step daybook map set 'web-*' frontend
step daybook map set 'web-prod-*' frontend api
step daybook map set 'worker-*' worker
step daybook map resolve web-prod-1 --explain
step daybook sync --wait
step daybook status
step daybook keys list

printf '\nA new version, pushed with no operator sync: the master notices and the minions follow.\n'
make_asset frontend-1.2.0
start=$SECONDS
step daybook push "$root/build/frontend-1.2.0.tar.gz"
wait_for "frontend 1.2.0 on web-prod-1" 30 test -d "$root/minions/web-prod-1/install/frontend/1.2.0"
wait_for "frontend 1.2.0 on web-staging-1" 30 test -d "$root/minions/web-staging-1/install/frontend/1.2.0"
echo "frontend 1.2.0 reached both web hosts within $((SECONDS - start)) s"

step find "$root/minions" -mindepth 4 -maxdepth 4 -path '*/install/*' -type d
printf '\nLogs are in %s/logs; run the demo again any time with `make demo`.\n' "$root"
