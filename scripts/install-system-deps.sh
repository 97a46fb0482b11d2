#!/bin/sh
# Installs the Debian packages the test suite drives for real: promtool (package "prometheus").
# Runs apt-get only as root and only for what is missing; otherwise says what to install.
set -eu
missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "note: the tests need Debian packages:$missing; install them (sudo apt-get install$missing) or run make test as root" >&2
    exit 0
fi
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends keeps the install small; policy-rc.d-less containers do not start the daemon.
apt-get install -y -qq --no-install-recommends $missing >/dev/null
