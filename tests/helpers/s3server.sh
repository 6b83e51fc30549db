#!/bin/bash
# A real S3-compatible server on 127.0.0.1 for the tests and benchmarks:
# OpenStack Swift from Debian's packages (proxy with s3api and tempauth,
# account, container and object servers, memcached), everything kept under
# one directory, one replica, devices as plain directories.
#
#   s3server.sh start DIR   installs what is missing, starts the servers,
#                           creates the bucket and prints shell assignments
#                           (S3_ENDPOINT, S3_REGION, S3_BUCKET,
#                           AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
#   s3server.sh stop DIR    stops every process it started, by PID
#
# Ports: S3_PORT_BASE (default 18480) for the proxy, +1 account, +2
# container, +3 object, +4 memcached; off the defaults of a real install.
set -u
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: s3server.sh start|stop DIR" >&2; exit 2; }
base=${S3_PORT_BASE:-18480}
py="/usr/bin/python3 -I"
names="memcached account container object proxy"

starttime() { # PID: the kernel's start time of that process, or nothing
	local st
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	st=${st##*) }
	set -- $st
	echo "${20}"
}

ours() { # NAME: the PID from NAME's pid file if that process is still the one started
	local pid t
	[ -f "$dir/run/$1.pid" ] && read -r pid t <"$dir/run/$1.pid" || return 1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
	[ -z "$t" ] || [ "$(starttime "$pid")" = "$t" ] || return 1
	echo "$pid"
}

stop() {
	local n pid alive
	for n in $names; do
		pid=$(ours $n) && kill "$pid" 2>/dev/null
	done
	local deadline=$((SECONDS + 5))
	while [ $SECONDS -lt $deadline ]; do
		alive=0
		for n in $names; do
			ours $n >/dev/null && alive=1
		done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	for n in $names; do
		pid=$(ours $n) && kill -9 "$pid" 2>/dev/null
		rm -f "$dir/run/$n.pid"
	done
}

if [ "$cmd" = stop ]; then
	stop
	exit 0
fi
[ "$cmd" = start ] || { echo "usage: s3server.sh start|stop DIR" >&2; exit 2; }

need="swift swift-proxy swift-account swift-container swift-object python3-swift memcached curl"
missing=""
for p in $need; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "s3server: installing:$missing" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 ||
		{ echo "s3server: could not install$missing (apt-get install failed)" >&2; exit 1; }
fi
for port in $base $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)); do
	if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
		echo "s3server: port $port on 127.0.0.1 is taken; set S3_PORT_BASE to a free range" >&2
		exit 1
	fi
done

mkdir -p "$dir/etc" "$dir/srv/d1" "$dir/run" "$dir/log"
etc=$dir/etc
if [ ! -f "$etc/object.ring.gz" ] || [ "$(cat "$etc/ring-ports" 2>/dev/null)" != "$base" ]; then
	rm -f "$etc"/*.builder "$etc"/*.ring.gz
	cat >"$etc/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = drfs-test-suffix
swift_hash_path_prefix = drfs-test-prefix
[storage-policy:0]
name = Policy-0
default = yes
EOF
	for ring in account:$((base + 1)) container:$((base + 2)) object:$((base + 3)); do
		r=${ring%%:*}
		p=${ring##*:}
		(cd "$etc" && swift-ring-builder $r.builder create 4 1 1 >/dev/null &&
			swift-ring-builder $r.builder add r1z1-127.0.0.1:$p/d1 100 >/dev/null &&
			swift-ring-builder $r.builder rebalance >/dev/null) ||
			{ echo "s3server: swift-ring-builder failed for the $r ring" >&2; exit 1; }
	done
	echo "$base" >"$etc/ring-ports"
fi
for s in account:$((base + 1)) container:$((base + 2)) object:$((base + 3)); do
	n=${s%%:*}
	cat >"$etc/$n-server.conf" <<EOF
[DEFAULT]
swift_dir = $etc
devices = $dir/srv
mount_check = false
bind_ip = 127.0.0.1
bind_port = ${s##*:}
workers = 0
log_name = $n
log_facility = LOG_LOCAL0
[pipeline:main]
pipeline = $n-server
[app:$n-server]
use = egg:swift#$n
[$n-replicator]
[$n-auditor]
[$n-updater]
EOF
done
cat >"$etc/proxy-server.conf" <<EOF
[DEFAULT]
swift_dir = $etc
bind_ip = 127.0.0.1
bind_port = $base
workers = 0
log_name = proxy
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck cache listing_formats s3api tempauth copy slo dlo proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$((base + 4))
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF

start_one() { # NAME COMMAND...
	local n=$1; shift
	"$@" >"$dir/log/$n.log" 2>&1 &
	echo "$! $(starttime $!)" >"$dir/run/$n.pid"
}
# Swift's servers take swift.conf from /etc/swift whatever swift_dir says;
# this runs the server's own script after pointing Swift at $etc.
in_dir='import sys; from swift.common import utils; utils.set_swift_dir(sys.argv[1]); s = sys.argv[2]; sys.argv = sys.argv[2:]; exec(compile(open(s).read(), s, "exec"))'
swift_server() { # NAME
	start_one $1 $py -c "$in_dir" "$etc" /usr/bin/swift-$1-server "$etc/$1-server.conf" -v
}
start_one memcached /usr/bin/memcached -l 127.0.0.1 -p $((base + 4)) -U 0 -m 64 -u root
for n in account container object proxy; do
	swift_server $n
done

ready=0
deadline=$((SECONDS + 40))
while [ $SECONDS -lt $deadline ]; do
	if curl -fs "http://127.0.0.1:$base/healthcheck" >/dev/null 2>&1; then ready=1; break; fi
	sleep 0.1
done
if [ $ready = 0 ]; then
	echo "s3server: the proxy did not answer on 127.0.0.1:$base; logs in $dir/log" >&2
	stop
	exit 1
fi

key="test:tester"
secret="testing"
bucket="drfs-test"
# the bucket is a Swift container: made through Swift's own API (tempauth)
hdrs=$(curl -s -D - -o /dev/null -H "X-Storage-User: $key" -H "X-Storage-Pass: $secret" \
	"http://127.0.0.1:$base/auth/v1.0")
token=$(printf '%s\n' "$hdrs" | tr -d '\r' | sed -n 's/^[Xx]-[Aa]uth-[Tt]oken: //p')
storage=$(printf '%s\n' "$hdrs" | tr -d '\r' | sed -n 's/^[Xx]-[Ss]torage-[Uu]rl: //p')
# right after a start the account and container servers may still answer 503
for _ in $(seq 1 50); do
	code=$(curl -s -o "$dir/log/bucket.out" -w '%{http_code}' -X PUT -H "X-Auth-Token: $token" \
		"$storage/$bucket")
	[ "$code" = 503 ] || break
	sleep 0.2
done
case $code in
201|202) ;;
*) echo "s3server: creating bucket $bucket failed: HTTP $code $(head -c 300 "$dir/log/bucket.out")" >&2
   stop; exit 1 ;;
esac
echo "S3_ENDPOINT=http://127.0.0.1:$base"
echo "S3_REGION=us-east-1"
echo "S3_BUCKET=$bucket"
echo "AWS_ACCESS_KEY_ID=$key"
echo "AWS_SECRET_ACCESS_KEY=$secret"
