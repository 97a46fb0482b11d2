#!/bin/sh
# Installs the Debian packages the test suite drives for real: promtool and prometheus (package
# "prometheus"), a PostgreSQL server ("postgresql"), a headless browser ("chromium"), curl (the curl example) and
# Go ("golang-go": the Ollama stand-in and client on Go's own net/http, as Ollama and its CLI are built).
# Runs apt-get only as root and only for what is missing; otherwise says what to install.
set -eu
missing=""
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v go >/dev/null 2>&1 || missing="$missing golang-go"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "note: the tests need Debian packages:$missing; install them (sudo apt-get install$missing) or run make test as root" >&2
    exit 0
fi
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps the install small; in a container without an init system no daemon starts.
apt-get install -y -qq --no-install-recommends $missing >/dev/null
