#!/usr/bin/env bash
# One shadow report for the whole fleet. Each gateway replica compares only the requests it
# answered and keeps them in its own store; this takes a consistent copy of every replica's
# store (`gateway report --export`, safe while it writes), copies them here and merges them.
#
#   deploy/k8s/collect-shadow-stores.sh [-n NAMESPACE] [gateway report options...]
#   deploy/k8s/collect-shadow-stores.sh -n ml-gateway --since 1h --format html > fleet.html
#
# Needs kubectl access to the namespace and a local `gateway` binary (GATEWAY=path to pick one).
set -euo pipefail
ns=ml-gateway
if [ "${1:-}" = "-n" ]; then ns="$2"; shift 2; fi
gateway="${GATEWAY:-gateway}"
command -v "$gateway" >/dev/null 2>&1 || { echo "no $gateway binary: build it (cargo build --release) and set GATEWAY=target/release/gateway" >&2; exit 1; }
dir="$(mktemp -d "${TMPDIR:-/tmp}/shadow-stores.XXXXXX")"
snapshot="/opt/gateway/data/export-$$.sqlite3"
pods=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=gateway --field-selector=status.phase=Running -o name)
[ -n "$pods" ] || { echo "no running gateway pods in namespace $ns" >&2; exit 1; }
for pod in $pods; do
  name="${pod#pod/}"
  kubectl -n "$ns" exec "$name" -- gateway report --config /opt/gateway/config/routes.yaml --export "$snapshot" >/dev/null
  kubectl -n "$ns" cp "$name:$snapshot" "$dir/$name.sqlite3" >/dev/null
  kubectl -n "$ns" exec "$name" -- rm -f "$snapshot"
  echo "copied $name's store" >&2
done
echo "stores in $dir" >&2
"$gateway" report --store "$dir" "$@"
