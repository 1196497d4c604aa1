#!/usr/bin/env bash
# A/B of builds on reads through a worker's own HTTP API (--http): each
# build directory given (holding ourkv; the first also ourdb-bench) runs a
# master and two workers on loopback, the first worker with --http, loaded
# with 10,000 keys of 100 B. Per round and build: the no-op server, stale
# GETs, the no-op server, strong GETs (wrk, 32 connections, D each), so each
# ratio is taken right after its reference. Usage:
#   ROUNDS=3 D=4s bash benches/ab-reads.sh DIR_A DIR_B ...
# Bounded: 4 wrk runs of D per build per round; everything it starts it stops.
set -euo pipefail
ROUNDS=${ROUNDS:-3}; D=${D:-4s}
tmp=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
start() { local name=$1; shift; "$@" > "$tmp/$name.out" 2> "$tmp/$name.err" & pids+=($!);
  for _ in $(seq 100); do grep -q listening "$tmp/$name.out" 2>/dev/null && return; sleep 0.1; done; echo "$name did not start"; cat $tmp/$name.err; exit 1; }
i=0
for B in "$@"; do
  q=$((7610 + i*10)); h=$((7690 + i))
  start m$i $B/ourkv master --data $tmp/m$i --listen 127.0.0.1:$q
  start a$i $B/ourkv worker --data $tmp/a$i --listen 127.0.0.1:$((q+1)) --master 127.0.0.1:$q --http 127.0.0.1:$h
  start b$i $B/ourkv worker --data $tmp/b$i --listen 127.0.0.1:$((q+2)) --master 127.0.0.1:$q
  python3 - $h <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for i in range(10000):
    c.request("PUT", f"/v1/kv/k{i}", body=(f"value-{i}-" * 20)[:100]); r = c.getresponse(); r.read(); assert r.status == 200
c.request("GET", "/v1/kv/k9999?consistency=strong"); r = c.getresponse(); r.read(); assert r.status == 200
PY
  i=$((i+1))
done
start noop $1/ourdb-bench noop-http 127.0.0.1:7699
for level in stale strong; do
cat > $tmp/$level.lua <<LUA
request = function() return wrk.format("GET", "/v1/kv/k" .. math.random(0, 9999) .. "?consistency=$level") end
LUA
done
rps() { wrk -t2 -c32 -d$D "$@" | awk '/Requests\/sec/ {print $2}'; }
for r in $(seq $ROUNDS); do
  i=0
  for B in "$@"; do
    for level in stale strong; do
      n=$(rps http://127.0.0.1:7699/); v=$(rps -s $tmp/$level.lua http://127.0.0.1:$((7690 + i)))
      echo "round $r $B $level $v noop $n ratio $(python3 -c "print(round($v/$n,3))")"
    done
    i=$((i+1))
  done
done
