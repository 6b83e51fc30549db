#!/bin/bash
# How requests reach the daemon.  Where the kernel offers it (Linux 6.14+,
# the fuse module's enable_uring), a mount takes them over io_uring, one
# queue per CPU served by threads pinned to that CPU; with fuse_uring=off,
# and on older kernels, over /dev/fuse.  Both serve the same filesystem:
# the error-code battery, data written and read back cold, many small
# files, O_TMPFILE, a crash and its replay.
. "$(dirname "$0")/lib.sh"

param=/sys/module/fuse/parameters/enable_uring
offered=false
[ -e "$param" ] && offered=true
mkdir -p "$T/native"
chmod 755 "$T" "$T/native"
"$FSOPS" battery "$T/native" 65534:65534 >"$T/native.out" 2>&1
head -c 48M /dev/urandom >"$T/data"
want_sum=$(sha256sum <"$T/data")

for mode in auto off; do
	B=$(new_backing "b-$mode"); M=$T/m-$mode
	mount_drfs "$B" "$M" "fuse_uring=$mode,allow_other"
	chmod 755 "$M"
	log=$B/.drfs/drfs.log
	if [ "$mode" = auto ] && $offered; then
		for _ in $(seq 1 50); do "$DRFS" status "$B" | grep -q '^requests: ' && break; sleep 0.1; done
		check "$mode: requests over io_uring, one queue per CPU" \
			grep -q "requests over io_uring, $(nproc --all) queues" "$log"
		check_eq "$mode: the fuse module allows it now" Y "$(cat "$param")"
		pid=$(daemon_pid "$B")
		check "$mode: the ring threads are pinned, one CPU each" \
			[ "$(for t in /proc/"$pid"/task/*; do taskset -pc "${t##*/}"; done 2>/dev/null |
			     grep -c 'list: [0-9]*$')" -ge "$(nproc --all)" ]
		check "$mode: drfs status says io_uring" \
			grep -q "^requests: *over io_uring, $(nproc --all) queues" <("$DRFS" status "$B")
		check_eq "$mode: drfs status --json says it too" \
			"io_uring, $(nproc --all) queues (one per CPU), 8 threads each" \
			"$("$DRFS" status "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("requests",""))')"
	else
		check "$mode: requests over /dev/fuse" bash -c "! grep -q 'requests over io_uring' '$log'"
		check "$mode: drfs status says /dev/fuse" \
			grep -q "^requests: *over /dev/fuse" <("$DRFS" status "$B")
	fi
	"$FSOPS" battery "$M" 65534:65534 >"$T/mount-$mode.out" 2>&1
	check_eq "$mode: the error-code battery gives what the native filesystem gives" \
		"$(cat "$T/native.out")" "$(cat "$T/mount-$mode.out")"
	cmp -s "$T/native.out" "$T/mount-$mode.out" || diff "$T/native.out" "$T/mount-$mode.out"

	cp "$T/data" "$M/data"
	sync -f "$M/data"
	echo 3 >/proc/sys/vm/drop_caches
	check_eq "$mode: 48 MiB read back cold" "$want_sum" "$(sha256sum <"$M/data")"
	mkdir "$M/small"
	for i in $(seq 1 300); do echo "$i" >"$M/small/f$i"; done
	check_eq "$mode: 300 small files listed" 300 "$(ls "$M/small" | wc -l)"
	check_eq "$mode: a small file's content" 217 "$(cat "$M/small/f217")"
	rm -f "$M"/small/f1*
	check_eq "$mode: unlinked" 189 "$(ls "$M/small" | wc -l)"
	# the transport relabels FUSE_TMPFILE, which libfuse does not know
	check_eq "$mode: O_TMPFILE made and linked" ok "$("$FSOPS" tmpfile "$M" tmpname payload)"
	check_eq "$mode: O_TMPFILE content" payload "$(cat "$M/tmpname")"

	# a crash: what fsync acknowledged is there after the replay
	echo acked >"$M/acked"
	sync "$M/acked"
	pid=$(daemon_pid "$B")
	kill -9 "$pid"
	for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	umount -l "$M"
	mount_drfs "$B" "$M" "fuse_uring=$mode"
	check_eq "$mode: fsynced data survives a kill and replay" acked "$(cat "$M/acked")"
	check_eq "$mode: data after the replay" "$want_sum" "$(sha256sum <"$M/data")"
	umount_drfs "$M"
	check_eq "$mode: the backing holds the data" "$want_sum" "$(sha256sum <"$B/data")"
done

B=$(new_backing b-bad)
check_exit "fuse_uring with a bad value" 2 "$DRFS" mount "$B" "$T/m-bad" -o fuse_uring=sometimes
check_err "fuse_uring with a bad value: the message" "fuse_uring=sometimes: give auto, on or off"
check "fuse_uring with a bad value: nothing mounted" bash -c "! grep -q ' $T/m-bad ' /proc/mounts"
finish
