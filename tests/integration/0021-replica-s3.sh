#!/bin/bash
# Replication to a real S3 server (OpenStack Swift with s3api on 127.0.0.1,
# started here from Debian packages by tests/helpers/s3server.sh and stopped
# by PID at the end), through a fault-injecting proxy: round trip (restore
# latest and @TIME, snapshot mount from the s3:// URL), resets, 500 and 503
# answers, truncated bodies, the server killed and restarted mid-upload and
# the daemon killed mid-upload: replication resumes by itself, and the
# next mount aborts the multipart upload such a kill leaves; the
# replica restores to what the mount held; wrong credentials, a missing
# bucket, an unreachable endpoint and a TLS certificate that does not verify
# show in status with the error while writes go on.
. "$(dirname "$0")/lib.sh"
DIGEST="python3 $TOP/tests/helpers/treedigest.py"
LOAD="python3 $TOP/tests/helpers/snapload.py"
S3SERVER=$TOP/tests/helpers/s3server.sh
PROXY="/usr/bin/python3 $TOP/tests/helpers/faultproxy.py"

SRV=$T/s3
export S3_PORT_BASE=${S3_PORT_BASE:-18480}
server_started=0
stop_all() {
	[ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null
	[ "$server_started" = 1 ] && "$S3SERVER" stop "$SRV" >/dev/null 2>&1
	cleanup
}
trap stop_all EXIT
env_lines=$("$S3SERVER" start "$SRV") || { say "the S3 server did not start: $(tail -5 "$SRV"/*.log 2>/dev/null)"; exit 1; }
server_started=1
eval "$env_lines"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
export DRFS_CACHE_DIR=$T/cache

# the fault proxy in front of the server
PPORT=$((S3_PORT_BASE + 10))
CTL=$T/faults
: >"$CTL"
$PROXY "$PPORT" "${S3_ENDPOINT#http://}" "$CTL" 2>"$T/proxy.log" &
proxy_pid=$!
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$PPORT) 2>/dev/null && break; sleep 0.1; done
# objects over 8 MiB (journal pieces and packs of up to 16 MiB) go up in 5 MiB parts
URL="s3://$S3_BUCKET/drfs-test?endpoint=http://127.0.0.1:$PPORT&region=$S3_REGION&path_style=1&multipart_threshold=8M&part_size=5M"
# reads of the replica (restore, snapshots, snapshot mount) go to the server directly
DIRECT="s3://$S3_BUCKET/drfs-test?endpoint=$S3_ENDPOINT&region=$S3_REGION&path_style=1"

. "$(dirname "$0")/replica-lib.sh"
CAUGHT_UP_TRIES=450      # 90 s: retries behind injected faults back off
# matches_mount MOUNT NAME: after a snapshot, the replica holds it and its
# restore from the S3 server equals the mount (contents and metadata)
matches_mount() {
	local m=$1 name=$2
	durable "$m"
	"$DRFS" snapshot "$m" --tag "$name" >/dev/null || { say "$name: no snapshot"; return 1; }
	caught_up "$B" || { say "$name: not caught up"; return 1; }
	shipped_latest "$B" || { say "$name: the snapshot is not on the replica"; return 1; }
	rm -rf "$T/$name"
	"$DRFS" restore "$DIRECT" latest "$T/$name" >/dev/null 2>"$T/$name.err" ||
		{ say "$name: restore failed: $(cat "$T/$name.err")"; return 1; }
	# mtimes: the kernel may send a file's mtime after the snapshot (writeback cache)
	$DIGEST "$T/$name" --no-mtime >"$T/$name.got"
	$DIGEST "$m" --no-mtime >"$T/$name.want"
	cmp -s "$T/$name.want" "$T/$name.got" || { say "$name: differs"; diff "$T/$name.want" "$T/$name.got" | head -5; return 1; }
}
# shipped_latest BACKING: waits (up to 60 s) until the replica's head names the latest local snapshot
shipped_latest() {
	local want
	want=$(latest_id "$1")
	for _ in $(seq 1 300); do
		[ "$(rstat "$1" head_snapshot)" = "$want" ] && return 0
		sleep 0.2
	done
	return 1
}
# pitr_matches MOUNT NAME: restore @now (the latest snapshot and the journal
# pieces after it) from the S3 server equals the mount
pitr_matches() {
	local m=$1 name=$2
	durable "$m"
	caught_up "$B" || { say "$name: not caught up"; return 1; }
	$DIGEST "$m" --no-mtime >"$T/$name.want"
	rm -rf "$T/$name"
	"$DRFS" restore "$DIRECT" "@$(date +%s.%N)" "$T/$name" >"$T/$name.out" 2>"$T/$name.err" ||
		{ say "$name: restore failed: $(cat "$T/$name.err")"; return 1; }
	grep -q "replayed [1-9]" "$T/$name.out" || { say "$name: nothing was replayed"; return 1; }
	$DIGEST "$T/$name" --no-mtime >"$T/$name.got"
	cmp -s "$T/$name.want" "$T/$name.got" || { say "$name: differs"; diff "$T/$name.want" "$T/$name.got" | head -5; return 1; }
}

B=$T/b
mkdir -p "$B"
head -c 2000000 /dev/urandom >"$B/existing"
require "init with an s3:// replica" "$DRFS" init "$B" --replica "$URL"
M=$T/m
mount_drfs "$B" "$M"
$LOAD "$M" 21 150 --big 3000000 >/dev/null
head -c 12000000 /dev/urandom >"$M/big-one"     # a journal piece and a pack over 8 MiB
check "the S3 replica catches up" matches_mount "$M" r1
check "and holds the snapshot just taken" shipped_latest "$B"
# the journal pieces: changes after the snapshot come back from them
mkdir "$M/after-snapshot"; echo one >"$M/after-snapshot/one"; mv "$M/w" "$M/after-snapshot/w"
check "restore @now from s3:// (the snapshot and the pieces after it) equals the mount" \
	pitr_matches "$M" p1
rm -rf "$T/r-latest"
check "restore latest from s3://" "$DRFS" restore "$DIRECT" latest "$T/r-latest"
check_eq "equals the local snapshot's restore" \
	"$("$DRFS" restore "$B" latest "$T/r-local" >/dev/null; $DIGEST "$T/r-local")" "$($DIGEST "$T/r-latest")"
mkdir -p "$T/sm"
MOUNTS+=("$T/sm")
check "snapshot-mount from s3://" "$DRFS" mount --snapshot latest "$DIRECT" "$T/sm"
check_eq "the snapshot mount equals the restore" "$($DIGEST "$T/r-latest")" "$($DIGEST "$T/sm")"
"$DRFS" umount "$T/sm"
check "big objects went up in parts" grep -q "PUT /$S3_BUCKET/drfs-test/.*?partNumber=2&uploadId=" "$T/proxy.log"
check "and their uploads were completed" grep -q "POST /$S3_BUCKET/drfs-test/.*?uploadId=" "$T/proxy.log"
n=$("$DRFS" status "$B" --json | python3 -c 'import json,sys; r=json.load(sys.stdin)["replica"]; print(r["requests_per_gib"])')
say "requests per GiB shipped so far: $n"
# idle: no requests but a heartbeat of at most one a minute
r0=$(rstat "$B" requests)
sleep 8
r1=$(rstat "$B" requests)
check "8 s idle cost at most one request ($r0 -> $r1)" [ $((r1 - r0)) -le 1 ]

# ---- faults from the proxy: every kind, replication goes on by itself ----
seed=100
for fault in "mode=reset count=4" "mode=500 count=4" "mode=503 count=4" "mode=truncate count=3" \
	"mode=slow delay=2 count=2" "mode=reset prob=0.3"; do
	echo "$fault" >"$CTL"
	seed=$((seed + 1))
	$LOAD "$M/after-snapshot" "$seed" 40 >/dev/null
	check "after faults '$fault' the replica catches up and restores to the mount" \
		matches_mount "$M" "f$seed"
done
: >"$CTL"
# a multipart upload (a 12 MB piece in 5 MiB parts) hit by resets: aborted, retried whole
parts0=$(grep -c "partNumber=" "$T/proxy.log")
echo "mode=reset count=3" >"$CTL"
head -c 12000000 /dev/urandom >"$M/after-snapshot/big-under-faults"
check "a multipart upload hit by resets is retried and the replica restores to the mount" \
	matches_mount "$M" fmp
: >"$CTL"
check "parts went up after the resets" [ "$(grep -c "partNumber=" "$T/proxy.log")" -gt "$parts0" ]
check "retries were counted" [ "$(rstat "$B" retries)" -gt 0 ]
$LOAD "$M/after-snapshot" 120 30 >/dev/null
check "restore @now from s3:// after the faults equals the mount" pitr_matches "$M" p2

# ---- the server killed and restarted in the middle of uploads ----
head -c 20000000 /dev/urandom >"$M/while-down" &
writer=$!
sleep 0.5
"$S3SERVER" stop "$SRV" >/dev/null
wait $writer
# the writer may have finished, and been shipped, before the stop: this one cannot
head -c 2000000 /dev/urandom >"$M/after-stop"
durable "$M"
check "status shows the replica failing while the server is down" wait_failing "$B"
"$DRFS" status "$B" >"$T/st.out" 2>&1
# a request cut off by the stop ends "Server returned nothing" or "cut short"
named="FAILING for [0-9]+ s: .*(refused|connect|reset|peer|nothing|cut short|503|500)"
check "the status line names the error" grep -Eq "$named" "$T/st.out"
grep -Eq "$named" "$T/st.out" || say "the status said: $(grep -m1 FAILING "$T/st.out")"
check_eq "writes go on meanwhile" 20000000 "$(stat -c %s "$M/while-down")"
eval "$("$S3SERVER" start "$SRV")" || { say "the S3 server did not restart"; exit 1; }
check "after the server is back, the replica catches up" matches_mount "$M" r-restart

# ---- the daemon killed in the middle of uploads ----
head -c 20000000 /dev/urandom >"$M/big-kill" &
writer=$!
sleep 0.5
kill -9 "$(daemon_pid "$B")"
wait $writer
sleep 0.5
umount -l "$M" 2>/dev/null
mount_drfs "$B" "$M"
check "after the daemon restarts, replication resumes" matches_mount "$M" r-kill

# ---- an unfinished multipart upload (a daemon killed between its start and its complete) ----
# (the access key holds a ':', which --user would take for the separator)
(umask 077; printf 'machine 127.0.0.1 login %s password %s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$T/netrc")
s3curl() {
	curl -s --aws-sigv4 "aws:amz:$S3_REGION:s3" --netrc-file "$T/netrc" \
		-H "x-amz-content-sha256: $(printf '' | sha256sum | cut -d' ' -f1)" "$@"
}
stray_listed() { s3curl "$S3_ENDPOINT/$S3_BUCKET?prefix=drfs-test%2F&uploads=" | grep -q "<Key>drfs-test/stray-upload</Key>"; }
umount_drfs "$M"
s3curl -X POST "$S3_ENDPOINT/$S3_BUCKET/drfs-test/stray-upload?uploads=" >"$T/stray.out"
check "a stray multipart upload is on the server" stray_listed
mount_drfs "$B" "$M"
check "a mount leaves an upload younger than an hour alone" stray_listed
umount_drfs "$M"
sleep 3    # the server gives the start time rounded up to the second
DRFS_SWEEP_AGE=1 mount_drfs "$B" "$M"
# (the server's listing may show an aborted upload for a moment)
for _ in $(seq 1 25); do stray_listed || break; sleep 0.2; done
if stray_listed; then
	fail "a mount aborts an older one"
	grep -E "upload|sweep|cleared" "$B/.drfs/drfs.log" | tail -3
	grep -E "uploads" "$T/proxy.log" | tail -3
else pass; fi
check "and logs it" grep -q "aborted the multipart upload of stray-upload" "$B/.drfs/drfs.log"

# ---- wrong credentials, a missing bucket, an unreachable endpoint ----
umount_drfs "$M"
bad_mount() { # OPTS EXPECTED-PATTERN NAME
	mount_drfs "$B" "$M" "$1"
	echo "$3" >"$M/$3"
	durable "$M"
	check "$3: status shows the replica failing" wait_failing "$B"
	check "$3: the error says what" grep -Eq "$2" <(rstat "$B" last_error; rstat "$B" last_error_code)
	check_eq "$3: writes go on" "$3" "$(cat "$M/$3")"
	umount_drfs "$M"
}
AWS_SECRET_ACCESS_KEY=wrong-secret bad_mount "replica=$URL" "SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId|403" wrong-credentials
bad_mount "replica=s3://no-such-bucket-drfs/x?endpoint=$S3_ENDPOINT&region=$S3_REGION&path_style=1" "NoSuchBucket|404" missing-bucket
bad_mount "replica=s3://$S3_BUCKET/x?endpoint=http://127.0.0.1:1&region=$S3_REGION&path_style=1" "refused|connect" unreachable
# TLS is verified: an endpoint with a self-signed certificate is refused
TPORT=$((S3_PORT_BASE + 11))
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/tls.key" -out "$T/tls.crt" -days 1 \
	-subj /CN=127.0.0.1 2>/dev/null
/usr/bin/python3 -c 'import http.server, ssl, sys
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.BaseHTTPRequestHandler)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain(sys.argv[2], sys.argv[3])
s.socket = c.wrap_socket(s.socket, server_side=True)
s.serve_forever()' "$TPORT" "$T/tls.crt" "$T/tls.key" 2>/dev/null &
PIDS+=($!)
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$TPORT) 2>/dev/null && break; sleep 0.1; done
bad_mount "replica=s3://$S3_BUCKET/x?endpoint=https://127.0.0.1:$TPORT&region=$S3_REGION&path_style=1" \
	"certificate" self-signed-tls
mount_drfs "$B" "$M"
check "with the right replica again, everything is shipped" matches_mount "$M" r-end
umount_drfs "$M"
finish
