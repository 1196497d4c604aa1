#!/usr/bin/env bash
# Service benchmark: wrk against the ourkv gateway in front of 1 master + 2
# workers, both as four processes on loopback and as `ourkv dev` (one
# process), beside a no-op HTTP server (the ceiling) and etcd 3.4's JSON
# gateway, same connections and duration, in one run.
# Needs: wrk, etcd (Debian packages wrk, etcd-server). Bounded: 8 runs of
# DURATION each plus start-up; everything it starts it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
cargo build --release -q -p server -p ourdb-bench
BIN=target/release
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
start dev $BIN/ourkv dev --data "$tmp/dev" --http 127.0.0.1:7681 --workers 2
start noop $BIN/ourdb-bench noop-http 127.0.0.1:7699
etcd --data-dir "$tmp/etcd" --listen-client-urls http://127.0.0.1:7379 --advertise-client-urls http://127.0.0.1:7379 \
  --listen-peer-urls http://127.0.0.1:7380 > "$tmp/etcd.out" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -s http://127.0.0.1:7379/health | grep -q true && break; sleep 0.1; done

for i in $(seq 0 99); do
  curl -s -X PUT "http://127.0.0.1:7680/v1/kv/k$i" -d "value-$i" > /dev/null
  curl -s -X PUT "http://127.0.0.1:7681/v1/kv/k$i" -d "value-$i" > /dev/null
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

run() { # label, wrk args...
  local label=$1; shift
  local out
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@")
  local rps p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  printf '| %s | %s | %s |\n' "$label" "$rps" "$p99"
}

echo "| workload ($CONNS connections, $DURATION) | requests/s | p99 |"
echo "|---|---|---|"
run "no-op HTTP server (ceiling)" http://127.0.0.1:7699/
run "GET stale (4 processes)" "http://127.0.0.1:7680/v1/kv/k7?consistency=stale"
run "GET strong (4 processes)" "http://127.0.0.1:7680/v1/kv/k7"
run "PUT ack=all, 2 workers (4 processes)" -s "$tmp/put.lua" http://127.0.0.1:7680
run "GET stale (ourkv dev)" "http://127.0.0.1:7681/v1/kv/k7?consistency=stale"
run "GET strong (ourkv dev)" "http://127.0.0.1:7681/v1/kv/k7"
run "PUT ack=all, 2 workers (ourkv dev)" -s "$tmp/put.lua" http://127.0.0.1:7681
run "etcd 3.4 put (JSON gateway)" -s "$tmp/etcdput.lua" http://127.0.0.1:7379
