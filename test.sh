#!/usr/bin/env bash
# Runs every test. Installs what the tests need when it is missing (Debian
# packages: the gateway tests load the status page in headless Chromium and
# run the README's curl lines; the network-namespace test needs iproute2 and
# python3; the connection tests run a node under prlimit, from util-linux;
# the OpenAPI test runs schemathesis, put in a virtualenv under target/),
# then runs the whole suite. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "test.sh: missing ${need[*]}; install them (Debian: apt-get install ${need[*]})" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "test.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The OpenAPI test runs schemathesis, from PyPI, in a virtualenv of its own.
st_venv=target/schemathesis
if [ ! -x "$st_venv/bin/st" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "test.sh: installing python3-venv" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends python3-venv
  fi
  echo "test.sh: installing schemathesis in $st_venv" >&2
  rm -rf "$st_venv"
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install -q schemathesis==4.32.5
fi
cargo --version
# --no-fail-fast: one failing test binary does not hide the others.
exec cargo test --no-fail-fast "$@"
