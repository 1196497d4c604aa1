#!/usr/bin/env bash
# Value-size benchmark: PUT (ack=all) and strong GET throughput and p99 at
# 1 KiB, 64 KiB, 1 MiB and 16 MiB values against the ourkv gateway in front
# of 1 master + 2 workers (four processes on loopback), beside etcd 3.4's
# JSON gateway at the sizes etcd takes (its request limit is 1.5 MiB), same
# connections and duration, in one run; then the gateway's peak RSS while
# 16 clients PUT 16 MiB each at once.
# Needs: wrk, etcd, curl, python3 (Debian packages wrk, etcd-server, curl).
# Bounded: 2 wrk runs per size and system of DURATION, plus start-up;
# everything it starts it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
CONNS=${CONNS:-8}
SIZES=${SIZES:-"1024 65536 1048576 16777216"}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p server
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

start master $BIN/ourkv master --data "$tmp/m" --listen 127.0.0.1:7601
start w1 $BIN/ourkv worker --data "$tmp/w1" --listen 127.0.0.1:7602 --master 127.0.0.1:7601
start w2 $BIN/ourkv worker --data "$tmp/w2" --listen 127.0.0.1:7603 --master 127.0.0.1:7601
start gw $BIN/ourkv gateway --http 127.0.0.1:7680 --master 127.0.0.1:7601 --worker 127.0.0.1:7602 --worker 127.0.0.1:7603
gw_pid=${pids[-1]}
etcd --data-dir "$tmp/etcd" --listen-client-urls http://127.0.0.1:7379 --advertise-client-urls http://127.0.0.1:7379 \
  --listen-peer-urls http://127.0.0.1:7380 > "$tmp/etcd.out" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -s http://127.0.0.1:7379/health | grep -q true && break; sleep 0.1; done

# First, on the fresh gateway: its peak RSS (VmHWM) while 16 clients PUT
# 16 MiB each at once.
head -c $((16 << 20)) /dev/zero | tr '\0' 'y' > "$tmp/16m"
before=$(awk '/VmHWM/ {print $2}' /proc/$gw_pid/status)
cpids=()
for i in $(seq 16); do
  curl -s -o /dev/null -w '%{http_code}\n' -X PUT --data-binary @"$tmp/16m" \
    "http://127.0.0.1:7680/v1/kv/c$i" >> "$tmp/codes" & cpids+=($!)
done
wait "${cpids[@]}"
after=$(awk '/VmHWM/ {print $2}' /proc/$gw_pid/status)
echo "16 concurrent 16 MiB PUTs: $(grep -c '^200$' "$tmp/codes")/16 answered 200; gateway peak RSS $((before / 1024)) MiB before, $((after / 1024)) MiB after"
echo

# One wrk run: "requests/s p99" (p99 in ms).
measure() {
  local out
  out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --timeout 30s --latency "$@")
  local rps p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}')
  echo "$rps $p99"
}

echo "| value | ourkv PUT ack=all req/s | p99 ms | etcd put req/s | p99 ms | ourkv GET strong req/s | p99 ms | etcd range req/s | p99 ms |"
echo "|---|---|---|---|---|---|---|---|---|"
for size in $SIZES; do
  # Values of `size` bytes under keys k0..k9, written first so GETs find them.
  cat > "$tmp/put.lua" <<LUA
local body = string.rep("x", $size)
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/v1/kv/k" .. (counter % 10) .. "?ack=all", nil, body)
end
LUA
  cat > "$tmp/get.lua" <<'LUA'
request = function()
  return wrk.format("GET", "/v1/kv/k" .. math.random(0, 9) .. "?consistency=strong")
end
LUA
  # etcd's JSON gateway takes base64: "eHh4" is "xxx". Keys "k0".."k9" are
  # "azA=".."azk=".
  cat > "$tmp/etcdput.lua" <<LUA
local value = string.rep("eHh4", math.floor($size / 3)) .. ({[0] = "", [1] = "eA==", [2] = "eHg="})[$size % 3]
counter = 0
request = function()
  counter = counter + 1
  local body = '{"key":"' .. ({"azA=","azE=","azI=","azM=","azQ=","azU=","azY=","azc=","azg=","azk="})[counter % 10 + 1] .. '","value":"' .. value .. '"}'
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, body)
end
LUA
  cat > "$tmp/etcdget.lua" <<'LUA'
request = function()
  local body = '{"key":"' .. ({"azA=","azE=","azI=","azM=","azQ=","azU=","azY=","azc=","azg=","azk="})[math.random(1, 10)] .. '"}'
  return wrk.format("POST", "/v3/kv/range", {["Content-Type"] = "application/json"}, body)
end
LUA
  op=$(measure -s "$tmp/put.lua" http://127.0.0.1:7680)
  og=$(measure -s "$tmp/get.lua" http://127.0.0.1:7680)
  if [ "$size" -le 1048576 ]; then
    ep=$(measure -s "$tmp/etcdput.lua" http://127.0.0.1:7379)
    eg=$(measure -s "$tmp/etcdget.lua" http://127.0.0.1:7379)
  else
    ep="- -"; eg="- -"
  fi
  read -r opr opp <<< "$op"; read -r ogr ogp <<< "$og"
  read -r epr epp <<< "$ep"; read -r egr egp <<< "$eg"
  label=$(python3 -c "s=$size; print(f'{s>>20} MiB' if s >= 1<<20 else f'{s>>10} KiB')")
  echo "| $label | $opr | $opp | $epr | $epp | $ogr | $ogp | $egr | $egp |"
done

