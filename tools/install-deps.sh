#!/bin/sh
# Installs the Debian packages drfs needs to build, test and run, when missing.
set -e
pkgs="build-essential pkg-config libfuse3-dev fuse3 liburing-dev libzstd-dev
      libcurl4-openssl-dev libssl-dev libcmocka-dev acl attr fio postgresql-15
      util-linux python3 curl swift swift-proxy swift-account swift-container
      swift-object python3-swift memcached"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "drfs: installing:$missing"
if [ "$(id -u)" != 0 ]; then
	echo "drfs: need root to install packages; run as root or: sudo apt-get install$missing" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
