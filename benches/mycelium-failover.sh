#!/usr/bin/env bash
# Failover over a real Mycelium overlay, by hand (CI cannot: Mycelium is in
# no registry). Needs a network from mycelium-net's up.sh (3 nodes, state in
# /tmp/mycelium-net), root, jq, bc, curl. Members: mkv0 the founding master,
# mkv1 and mkv2 workers, a gateway in mkv0. Each round: a writer of ack=all
# PUTs runs, the master is killed (-9); a fresh PUT is started every 100 ms
# for 6 s (when each ends and how); the killed member restarts with its own
# command line. At the end every acknowledged write is read back.
# usage: BIN=target/release/ourkv benches/mycelium-failover.sh HEARTBEAT_MS ROUNDS TAG
# Bounded: ROUNDS rounds of about 20 s; everything it starts it stops.
set -u
HB=$1; ROUNDS=$2; TAG=$3
BIN=${BIN:-target/release/ourkv}
BIN=$(readlink -f "$BIN")
S=/tmp/ourkv-mycelium-failover/$TAG; rm -rf "$S"; mkdir -p "$S"
NODES=/tmp/mycelium-net/nodes.json
key() { jq -r ".[$1].pubkey" $NODES; }
$BIN cluster init --out "$S/cluster" >/dev/null
HBF=(); [ "$HB" != 50 ] && HBF=(--heartbeat-ms "$HB")
start() { # i
  local i=$1 role=worker extra=(--master "$(key 0):7000")
  [ $i = 0 ] && { role=master; extra=(); }
  echo "$BIN $role --data $S/n$i --listen :700$i --cluster $S/cluster --mycelium-api http://127.0.0.1:8989 --threads 1 ${HBF[*]} ${extra[*]}" > "$S/n$i.cmd"
  ip netns exec mkv$i bash -c "exec $(cat $S/n$i.cmd)" >> "$S/n$i.log" 2>&1 &
  echo $! > "$S/n$i.pid"
}
for i in 0 1 2; do start $i; sleep 1; done
ip netns exec mkv0 $BIN gateway --http 127.0.0.1:8080 --cluster "$S/cluster" --mycelium-api http://127.0.0.1:8989 \
  --master "$(key 0):7000" --worker "$(key 1):7001" --worker "$(key 2):7002" >> "$S/gw.log" 2>&1 &
echo $! > "$S/gw.pid"
G="ip netns exec mkv0 curl -s -m 5"
put() { $G -o /dev/null -w '%{http_code}' -X PUT "http://127.0.0.1:8080/v1/kv/$1?ack=all" -d "$2"; }
# wait for 3 voters and a write
for t in $(seq 1 120); do
  v=$($G http://127.0.0.1:8080/v1/cluster | jq '[.members[]? | select(.voter and (.in_sync or .master))] | length' 2>/dev/null)
  [ "${v:-0}" = 3 ] && [ "$(put warm 1)" = 200 ] && break; sleep 0.5
done
echo "formed after ~$((t/2)) s: $($G http://127.0.0.1:8080/v1/cluster | jq -c '[.term, [.members[] | [.addr, .master, .voter, .in_sync]]]')"
# steady state: 200 ack=all PUTs and 200 strong GETs, one at a time
for k in $(seq 1 200); do $G -o /dev/null -w '%{time_total}\n' -X PUT "http://127.0.0.1:8080/v1/kv/s$k?ack=all" -d v$k; done > "$S/put.lat"
for k in $(seq 1 200); do $G -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:8080/v1/kv/s$k"; done > "$S/get.lat"
pct() { sort -n "$1" | awk '{a[NR]=$1} END {printf "p50 %.1f ms, p99 %.1f ms, max %.1f ms", a[int(NR*0.5)]*1000, a[int(NR*0.99)]*1000, a[NR]*1000}'; }
echo "steady: PUT ack=all $(pct $S/put.lat); strong GET $(pct $S/get.lat)"
term0=$($G http://127.0.0.1:8080/v1/cluster | jq .term)
for r in $(seq 1 $ROUNDS); do
  m=$($G http://127.0.0.1:8080/v1/cluster | jq -r '.members[] | select(.master) | .addr' | sed 's/.*:700//')
  [ -z "$m" ] && { echo "round $r: no master known"; sleep 2; continue; }
  # a background writer: one ack=all PUT after another, each with a 5 s limit
  ( n=0; while [ ! -f "$S/stop" ]; do n=$((n+1)); c=$(put w$r-$n $n); echo "$(date +%s.%N) $c"; done ) > "$S/w$r.log" &
  wp=$!
  sleep 2
  kt=$(date +%s.%N); kill -9 "$(cat $S/n$m.pid)"
  # fresh probes: one ack=all PUT started every 100 ms for 6 s, each on its own
  pp=()
  for p in $(seq 1 60); do
    ( t0=$(date +%s.%N); c=$(put p$r-$p x); t1=$(date +%s.%N); echo "$(echo "$t0 - $kt" | bc) $(echo "$t1 - $kt" | bc) $c" ) >> "$S/p$r.log" &
    sleep 0.1
  done
  sleep 6
  first=$(awk '$3==200' "$S/p$r.log" | sort -n | head -1)
  hung=$(awk '$3!=200' "$S/p$r.log" | sort -n | awk '{printf "%.2f->%.2f:%s ", $1, $2, $3}')
  touch "$S/stop"; sleep 6; kill $wp 2>/dev/null; rm -f "$S/stop"
  fails=$(awk -v k=$kt '$1>k && $2!=200' "$S/w$r.log" | wc -l)
  nm=$($G http://127.0.0.1:8080/v1/cluster | jq -r '.members[] | select(.master) | .addr' | sed 's/.*:700//')
  echo "round $r: killed n$m, new master n$nm; first probe answered 200: started/ended (s after kill) $first; probes not 200: $hung; writer requests failed: $fails"
  start $m
  for t in $(seq 1 120); do
    v=$($G http://127.0.0.1:8080/v1/cluster | jq '[.members[]? | select(.voter and (.in_sync or .master))] | length' 2>/dev/null)
    [ "${v:-0}" = 3 ] && break; sleep 0.5
  done
  echo "   n$m back in sync after ~$((t/2)) s"
done
term1=$($G http://127.0.0.1:8080/v1/cluster | jq .term)
# every acknowledged write readable
bad=0; tot=0
for r in $(seq 1 $ROUNDS); do
  n=0; while read -r ts c; do n=$((n+1)); [ "$c" = 200 ] || continue; tot=$((tot+1))
    got=$($G "http://127.0.0.1:8080/v1/kv/w$r-$n"); [ "$got" = "$n" ] || bad=$((bad+1)); done < "$S/w$r.log"
done
echo "terms $term0 -> $term1; acknowledged writes checked: $tot, wrong or missing: $bad"
kill $(cat "$S/gw.pid") $(cat "$S"/n*.pid) 2>/dev/null; sleep 1
