#!/usr/bin/env bash
# A/B of builds on reads: each build directory given (holding ourkv; the
# first also ourdb-bench) runs a master and two workers on loopback, loaded
# with 10,000 keys of 100 B. VIA=worker (the default) reads through the
# first worker's own HTTP API (--http, three processes); VIA=gateway through
# a separate gateway (four processes). NODE_THREADS=N gives every node
# process N runtime threads (OURKV_THREADS). Per round and build: the no-op
# server, stale GETs, the no-op server, strong GETs (wrk, 32 connections, D
# each), so each ratio is taken right after its reference; with the CPU
# time per request of the process serving HTTP (/proc/PID/stat).
# TOGETHER=1 instead loads every build at the same time (one wrk each, one
# thread and 16 connections), per round and level, and gives each build's
# CPU per request, of the serving process and of all its processes: on a
# machine whose speed drifts, builds compared in the same seconds. The
# position can weigh too (once the build started second measured up to 22 %
# more over all its processes, whichever it was): run both orders. Usage:
#   ROUNDS=3 D=4s VIA=gateway bash benches/ab-reads.sh DIR_A DIR_B ...
#   TOGETHER=1 ROUNDS=6 VIA=gateway NODE_THREADS=1 bash benches/ab-reads.sh A B
# Bounded: 4 wrk runs of D per build per round (TOGETHER: 2 per round);
# everything it starts it stops.
set -euo pipefail
ROUNDS=${ROUNDS:-3}; D=${D:-4s}; export VIA=${VIA:-worker}
case $VIA in worker|gateway) ;; *) echo "VIA must be worker or gateway" >&2; exit 2;; esac
nt=(); [ -n "${NODE_THREADS:-}" ] && nt=(env OURKV_THREADS="$NODE_THREADS")
tmp=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
start() { local name=$1; shift; "$@" > "$tmp/$name.out" 2> "$tmp/$name.err" & pids+=($!);
  for _ in $(seq 100); do grep -q listening "$tmp/$name.out" 2>/dev/null && return; sleep 0.1; done; echo "$name did not start"; cat $tmp/$name.err; exit 1; }
i=0; serving=(); every=()
for B in "$@"; do
  q=$((7610 + i*10)); h=$((7690 + i))
  http=(--http 127.0.0.1:$h); [ "$VIA" = gateway ] && http=()
  start m$i "${nt[@]}" $B/ourkv master --data $tmp/m$i --listen 127.0.0.1:$q
  all=${pids[-1]}
  start a$i "${nt[@]}" $B/ourkv worker --data $tmp/a$i --listen 127.0.0.1:$((q+1)) --master 127.0.0.1:$q "${http[@]}"
  serving+=(${pids[-1]}); all="$all ${pids[-1]}"
  start b$i "${nt[@]}" $B/ourkv worker --data $tmp/b$i --listen 127.0.0.1:$((q+2)) --master 127.0.0.1:$q
  all="$all ${pids[-1]}"
  if [ "$VIA" = gateway ]; then
    start g$i "${nt[@]}" $B/ourkv gateway --http 127.0.0.1:$h --master 127.0.0.1:$q --worker 127.0.0.1:$((q+1)) --worker 127.0.0.1:$((q+2))
    serving[-1]=${pids[-1]}; all="$all ${pids[-1]}"
  fi
  every+=("$all")
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
p_noop=${pids[-1]}
for level in stale strong; do
cat > $tmp/$level.lua <<LUA
request = function() return wrk.format("GET", "/v1/kv/k" .. math.random(0, 9999) .. "?consistency=$level") end
LUA
done
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
# "requests/s cpu-µs-per-request" of one wrk run against the process PID.
run() { local pid=$1; shift; local t0 t1 out
  t0=$(ticks "$pid"); out=$(wrk -t2 -c32 -d$D "$@"); t1=$(ticks "$pid")
  echo "$out" | awk -v t=$((t1 - t0)) -v hz="$HZ" '/requests in/ {n=$1} /Requests\/sec/ {r=$2} END {printf "%s %.2f\n", r, t * 1e6 / hz / n}'; }
if [ "${TOGETHER:-0}" = 1 ]; then
  n=$#
  for r in $(seq $ROUNDS); do
    for level in stale strong; do
      s0=(); a0=(); w=()
      for i in $(seq 0 $((n - 1))); do
        # shellcheck disable=SC2086
        s0+=($(ticks ${serving[$i]})); a0+=($(ticks ${every[$i]}))
      done
      for i in $(seq 0 $((n - 1))); do
        wrk -t1 -c16 -d$D -s $tmp/$level.lua http://127.0.0.1:$((7690 + i)) > $tmp/wrk$i & w+=($!)
      done
      wait "${w[@]}"
      i=0
      for B in "$@"; do
        # shellcheck disable=SC2086
        s1=$(ticks ${serving[$i]}); a1=$(ticks ${every[$i]})
        awk -v b="$B" -v r=$r -v l=$level -v s=$((s1 - ${s0[$i]})) -v a=$((a1 - ${a0[$i]})) -v hz="$HZ" \
          '/requests in/ {n=$1} /Requests\/sec/ {q=$2} END {printf "round %s %s %s %s req/s %s cpu_us %.2f all_cpu_us %.2f\n", r, b, l, ENVIRON["VIA"], q, s * 1e6 / hz / n, a * 1e6 / hz / n}' $tmp/wrk$i
        i=$((i+1))
      done
    done
  done
  exit 0
fi
for r in $(seq $ROUNDS); do
  i=0
  for B in "$@"; do
    for level in stale strong; do
      read -r n nc <<< "$(run $p_noop http://127.0.0.1:7699/)"
      read -r v vc <<< "$(run ${serving[$i]} -s $tmp/$level.lua http://127.0.0.1:$((7690 + i)))"
      echo "round $r $B $VIA $level $v noop $n ratio $(python3 -c "print(round($v/$n,3))") cpu_us $vc noop_cpu_us $nc cpu_ratio $(python3 -c "print(round($vc/$nc,2))")"
    done
    i=$((i+1))
  done
done
