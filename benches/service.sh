#!/usr/bin/env bash
# Service benchmark: wrk against the ourkv gateway in front of 1 master + 2
# workers, both as four processes on loopback and as `ourkv dev` (one
# process), and against the nodes' own HTTP APIs (--http), beside a no-op
# HTTP server (the ceiling) and etcd 3.4's JSON gateway, same connections
# and duration, in one run. Each row also gives the CPU time per request of
# the process serving HTTP and of all the layout's processes.
# Needs: wrk, etcd (Debian packages wrk, etcd-server). Bounded: 20 wrk runs
# of DURATION per round, ROUNDS rounds, plus start-up; everything it starts
# it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
KEYS=${KEYS:-10000}
THREADS=${THREADS:-2}
# Extra flags of master and workers, e.g. NODE_FLAGS=--standalone for the
# cluster without failover.
NODE_FLAGS=${NODE_FLAGS:-}
# Extra flags of the workers alone, e.g. WORKER_FLAGS="--sync group" for
# standalone workers that fsync what they acknowledge, as failover ones do.
WORKER_FLAGS=${WORKER_FLAGS:-}
# BIN=DIR runs the binaries in DIR (ourkv, ourdb-bench) without building,
# e.g. to compare two builds in alternating runs.
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p server -p ourdb-bench
  BIN=target/release
fi
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

start() { # name, command...
  local name=$1; shift
  "$@" > "$tmp/$name.out" 2> "$tmp/$name.err" & pids+=($!)
  for _ in $(seq 100); do grep -q listening "$tmp/$name.out" 2>/dev/null && return; sleep 0.1; done
  echo "$name did not start" >&2; cat "$tmp/$name.err" >&2; exit 1
}

# The nodes also serve HTTP (--http; WORKER_HTTP=0 leaves it out, e.g. for
# --standalone): the "worker --http" rows read through worker 1's own API
# (one process, no hop), the "master --http" row writes through the
# master's.
WORKER_HTTP=${WORKER_HTTP:-1}
m_http=(); w1_http=(); w2_http=()
if [ "$WORKER_HTTP" = 1 ]; then
  m_http=(--http 127.0.0.1:7684); w1_http=(--http 127.0.0.1:7682); w2_http=(--http 127.0.0.1:7683)
fi
# NODE_THREADS=N runs master, workers and gateway with --threads N
# (OURKV_THREADS; default: one runtime thread per core); `ourkv dev`
# and the references keep the default.
nt=(); [ -n "${NODE_THREADS:-}" ] && nt=(env OURKV_THREADS="$NODE_THREADS")
start master "${nt[@]}" $BIN/ourkv master --data "$tmp/m" --listen 127.0.0.1:7601 "${m_http[@]}" $NODE_FLAGS
p_master=${pids[-1]}
start w1 "${nt[@]}" $BIN/ourkv worker --data "$tmp/w1" --listen 127.0.0.1:7602 --master 127.0.0.1:7601 "${w1_http[@]}" $NODE_FLAGS $WORKER_FLAGS
p_w1=${pids[-1]}
start w2 "${nt[@]}" $BIN/ourkv worker --data "$tmp/w2" --listen 127.0.0.1:7603 --master 127.0.0.1:7601 "${w2_http[@]}" $NODE_FLAGS $WORKER_FLAGS
p_w2=${pids[-1]}
# GATEWAY_THREADS=N gives the gateway its own thread count.
gt=("${nt[@]}"); [ -n "${GATEWAY_THREADS:-}" ] && gt=(env OURKV_THREADS="$GATEWAY_THREADS")
start gw "${gt[@]}" $BIN/ourkv gateway --http 127.0.0.1:7680 --master 127.0.0.1:7601 --worker 127.0.0.1:7602 --worker 127.0.0.1:7603
p_gw=${pids[-1]}
start dev $BIN/ourkv dev --data "$tmp/dev" --http 127.0.0.1:7681 --workers 2
p_dev=${pids[-1]}
start noop $BIN/ourdb-bench noop-http 127.0.0.1:7699
p_noop=${pids[-1]}
etcd --data-dir "$tmp/etcd" --listen-client-urls http://127.0.0.1:7379 --advertise-client-urls http://127.0.0.1:7379 \
  --listen-peer-urls http://127.0.0.1:7380 > "$tmp/etcd.out" 2>&1 & pids+=($!)
p_etcd=${pids[-1]}
for _ in $(seq 100); do curl -s http://127.0.0.1:7379/health | grep -q true && break; sleep 0.1; done

# GETs read KEYS keys of 100 B, a random one per request (as users would,
# not one hot key); PUTs write keys k0..k99. Loaded over one keep-alive
# connection per gateway, then one strong read of the last key makes sure
# every worker has them all before the stale rows run.
python3 - "$KEYS" <<'PY'
import http.client, sys
n = int(sys.argv[1])
for port in (7680, 7681):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(max(n, 100)):
        c.request("PUT", f"/v1/kv/k{i}", body=(f"value-{i}-" * 20)[:100])
        r = c.getresponse(); r.read()
        assert r.status == 200, (port, i, r.status)
    c.request("GET", f"/v1/kv/k{max(n, 100) - 1}")
    r = c.getresponse(); r.read()
    assert r.status == 200, (port, r.status)
PY
for level in stale strong; do
  cat > "$tmp/get-$level.lua" <<LUA
request = function()
  return wrk.format("GET", "/v1/kv/k" .. math.random(0, $KEYS - 1) .. "?consistency=$level")
end
LUA
done
cat > "$tmp/put.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/k" .. (counter % 100) .. "?ack=all", nil, "v" .. counter)
end
LUA
cat > "$tmp/etcdput.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  -- key "k<n mod 100>", value "v<n>", both base64 as the JSON gateway wants
  local b64 = function(s)
    local b = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
    return ((s:gsub('.', function(x)
      local r, byte = '', x:byte()
      for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and '1' or '0') end
      return r
    end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
      if #x < 6 then return '' end
      local c = 0
      for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
      return b:sub(c + 1, c + 1)
    end) .. ({ '', '==', '=' })[#s % 3 + 1])
  end
  local body = '{"key":"' .. b64("k" .. (counter % 100)) .. '","value":"' .. b64("v" .. counter) .. '"}'
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, body)
end
LUA

# CPU time (user + system, clock ticks) of the processes given by pid.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)

# The machine's CPU time so far, in clock ticks: "busy idle" (idle counts
# iowait too), summed over its cores.
machine() { awk '$1=="cpu" {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }

# One wrk run: "requests/s p99 cpu-serving cpu-all cpu-rest idle" (p99 in
# ms; CPU in µs per request, from /proc/PID/stat over the run: of the
# process that serves HTTP, and of every process of the layout; cpu-rest is
# the machine's other busy time per request, from /proc/stat: wrk itself and
# whatever else ran; idle is the share of the machine's CPU time left idle).
# SERVING and ALL are pid lists.
measure() {
  local serving=$1 all=$2; shift 2
  local out s0 a0 s1 a1 m0 m1
  # shellcheck disable=SC2086
  s0=$(ticks $serving); a0=$(ticks $all); m0=$(machine)
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@")
  # shellcheck disable=SC2086
  s1=$(ticks $serving); a1=$(ticks $all); m1=$(machine)
  local rps p99 n
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  p99=$(echo "$out" | awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}')
  awk -v r="$rps" -v p="$p99" -v s=$((s1 - s0)) -v a=$((a1 - a0)) -v n="$n" -v hz="$HZ" \
    -v m0="$m0" -v m1="$m1" \
    'BEGIN {split(m0, x, " "); split(m1, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2];
      printf "%s %s %.2f %.2f %.2f %.1f\n", r, p, s * 1e6 / hz / n, a * 1e6 / hz / n,
        (busy - a) * 1e6 / hz / n, 100 * idle / (busy + idle)}'
}

# The machine's speed drifts by tens of percent within a minute, so every
# row is measured right after its reference (the no-op server for reads,
# etcd for writes), and each ratio is taken within that pair. Rows are the
# median over ROUNDS rounds.
NOOP=("$p_noop" "$p_noop" http://127.0.0.1:7699/)
ETCD=("$p_etcd" "$p_etcd" -s "$tmp/etcdput.lua" http://127.0.0.1:7379)
four="$p_gw $p_master $p_w1 $p_w2"
three="$p_master $p_w1 $p_w2"
# label|reference|serving pid|all pids|wrk arguments
rows=(
  "GET stale (4 processes)|NOOP|$p_gw|$four|-s $tmp/get-stale.lua http://127.0.0.1:7680"
  "GET strong (4 processes)|NOOP|$p_gw|$four|-s $tmp/get-strong.lua http://127.0.0.1:7680"
  "PUT ack=all, 2 workers (4 processes)|ETCD|$p_gw|$four|-s $tmp/put.lua http://127.0.0.1:7680"
  "GET stale (ourkv dev)|NOOP|$p_dev|$p_dev|-s $tmp/get-stale.lua http://127.0.0.1:7681"
  "GET strong (ourkv dev)|NOOP|$p_dev|$p_dev|-s $tmp/get-strong.lua http://127.0.0.1:7681"
  "PUT ack=all, 2 workers (ourkv dev)|ETCD|$p_dev|$p_dev|-s $tmp/put.lua http://127.0.0.1:7681"
)
if [ "$WORKER_HTTP" = 1 ]; then
  rows+=(
    "GET stale (worker --http, 3 processes)|NOOP|$p_w1|$three|-s $tmp/get-stale.lua http://127.0.0.1:7682"
    "GET strong (worker --http, 3 processes)|NOOP|$p_w1|$three|-s $tmp/get-strong.lua http://127.0.0.1:7682"
    "PUT ack=all, 2 workers (worker --http, 3 processes)|ETCD|$p_w1|$three|-s $tmp/put.lua http://127.0.0.1:7682"
    "PUT ack=all, 2 workers (master --http, 3 processes)|ETCD|$p_master|$three|-s $tmp/put.lua http://127.0.0.1:7684"
  )
fi
: > "$tmp/results"
# ONLY="0 1" runs those rows alone (numbered from 0 in the order above).
picked=${ONLY:-${!rows[*]}}
for round in $(seq "$ROUNDS"); do
  for i in $picked; do
    IFS='|' read -r label ref serving all args <<< "${rows[$i]}"
    if [ "$ref" = NOOP ]; then r=$(measure "${NOOP[@]}"); else r=$(measure "${ETCD[@]}"); fi
    # shellcheck disable=SC2086
    w=$(measure "$serving" "$all" $args)
    echo "$i $round $r $w" >> "$tmp/results"
  done
done

# RAW=FILE keeps the per-round figures (one line per wrk pair, columns as below).
[ -n "${RAW:-}" ] && cp "$tmp/results" "$RAW"
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# results: row round, then for the reference and for the row each:
# rps p99 cpu cpu-all cpu-rest idle
echo "| workload ($CONNS connections, $DURATION, median of $ROUNDS rounds) | requests/s | p99 ms | reference requests/s | reference p99 ms | ratio (rounds) | CPU µs/request: serving process, all processes (reference) | rest of the machine µs/request, idle % (reference) |"
echo "|---|---|---|---|---|---|---|---|"
for i in $picked; do
  IFS='|' read -r label ref _ <<< "${rows[$i]}"
  mine=$(awk -v i="$i" '$1==i' "$tmp/results")
  col() { echo "$mine" | awk -v c="$1" '{print $c}' | median; }
  ratios=$(echo "$mine" | awk '{printf "%.2f\n", $9/$3}')
  med=$(echo "$ratios" | median)
  name=$([ "$ref" = NOOP ] && echo "no-op" || echo "etcd")
  printf '| %s | %.0f | %.2f | %s %.0f | %.2f | %.2f× %s (%s) | %.1f, %.1f (%s %.1f) | %.1f, %.0f %% (%.1f, %.0f %%) |\n' "$label" "$(col 9)" "$(col 10)" "$name" "$(col 3)" "$(col 4)" "$med" "$name" "$(echo $ratios | tr ' ' ',')" "$(col 11)" "$(col 12)" "$name" "$(col 5)" "$(col 13)" "$(col 14)" "$(col 7)" "$(col 8)"
done
