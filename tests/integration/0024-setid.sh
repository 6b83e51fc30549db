#!/bin/bash
# Set-id bits are cleared by the daemon (FUSE_HANDLE_KILLPRIV_V2), as the
# native filesystem clears them: by write (through the page cache and
# O_DIRECT), truncate, open with O_TRUNC, fallocate, copy_file_range and
# chown, for root, a member of the file's group and a non-member, on files
# with and without group execute.  The same matrix runs in a plain directory
# and on the mount; the modes must agree.  The change is journaled and
# survives a kill -9; and a write(2) no longer costs a GETXATTR round trip.
. "$(dirname "$0")/lib.sh"
mkdir -p "$T/native"
chmod 755 "$T" "$T/native"
printf "source-bytes" >"$T/native/src"; chmod 644 "$T/native/src"

# run_op DIR OP CALLER FILE
run_op() {
	local d=$1 op=$2 who=$3 f=$4 pre=()
	case $who in
	root) pre=() ;;
	member) pre=(setpriv --reuid=1000 --regid=1000 --groups=4242 --) ;;
	other) pre=(setpriv --reuid=1000 --regid=1000 --clear-groups --) ;;
	esac
	case $op in
	append) "${pre[@]}" sh -c "echo x >>'$f'" ;;
	odirect) "${pre[@]}" "$FSOPS" odirect "$f" 0 a >/dev/null ;;
	truncate) "${pre[@]}" truncate -s 100 "$f" ;;
	otrunc) "${pre[@]}" sh -c ": >'$f'" ;;
	fallocate) "${pre[@]}" fallocate -l 8192 "$f" ;;
	copy) [ "$("${pre[@]}" "$FSOPS" copy "$d/src" "$f" 0 0 6)" = 6 ] || echo "copy into $f failed" >&2 ;;
	chown) chown 1000 "$f" ;;
	esac
}

# matrix DIR: one line per case, with the mode the file has afterwards
matrix() {
	local d=$1 op who mode f
	mkdir -p "$d/k"; chmod 777 "$d/k"
	for op in ${OPS:-append odirect truncate otrunc fallocate copy chown}; do
		for who in root member other; do
			[ "$op" = chown ] && [ "$who" != root ] && continue
			for mode in 6666 6676 2666 2676 4766; do
				f=$d/k/$op-$who-$mode
				printf 'twelve bytes' >"$f"; chown 0:4242 "$f"; chmod "$mode" "$f"
				run_op "$d" "$op" "$who" "$f"
				echo "$op $who $mode -> $(stat -c %a "$f")"
			done
		done
	done
}
matrix "$T/native" >"$T/native.txt"
check "the native matrix ran (95 cases)" [ "$(wc -l <"$T/native.txt")" -eq 95 ]
# the native results say what the cases test: some clear, some keep
check "natively, some cases clear set-id bits" grep -q -- '-> [0-7][0-7][0-7]$' "$T/native.txt"
check "natively, some cases keep them" grep -q -- '-> [2-7][0-7][0-7][0-7]$' "$T/native.txt"
# over /dev/fuse too: the flags come through the same custom I/O layer
for mode in off auto; do
	B=$(new_backing "b-$mode"); M=$T/m-$mode
	mount_drfs "$B" "$M" "allow_other,fuse_uring=$mode"
	chmod 755 "$M"; cp "$T/native/src" "$M/src"
	matrix "$M" >"$T/drfs.txt"
	check_eq "$mode: every case as natively" "" "$(diff "$T/native.txt" "$T/drfs.txt")"
	check_eq "$mode: the backing holds the same modes" \
		"$(cd "$M/k" && stat -c '%n %a' * | sort)" "$(cd "$B/k" && stat -c '%n %a' * | sort)"
	[ "$mode" = auto ] || umount_drfs "$M"
done

# invariant 4 after the set-id cases: a snapshot built from the journal
# equals a scan (DRFS_SNAPSHOT_VERIFY).
B4=$(new_backing b-inv4); M4=$T/m-inv4
DRFS_SNAPSHOT_VERIFY=1 mount_drfs "$B4" "$M4" allow_other
chmod 755 "$M4"; cp "$T/native/src" "$M4/src"
matrix "$M4" >/dev/null
check "the journal holds every clearing (its snapshot equals a scan)" "$DRFS" snapshot "$M4" --tag setid
umount_drfs "$M4"

# journaled: after a kill -9 and replay the modes are those the mount showed
sync "$M"/k/*   # fsync: durable in the journal, then lost from memory
before=$(cd "$M/k" && stat -c '%n %a' * | sort)
pid=$(daemon_pid "$B")
kill -9 "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
umount -l "$M"
mount_drfs "$B" "$M" allow_other
after=$(cd "$M/k" && stat -c "%n %a" * | sort)
check_eq "modes after a kill -9 and replay" "" "$(diff <(echo "$before") <(echo "$after"))"
"$DRFS" journal dump "$B" >"$T/dump.txt" 2>&1
# only a clearing gives mode 676 here (the files were made 644, then 6676 and so on)
check "the clearing is a journaled SETATTR" grep -q 'SETATTR .* mode=100676' "$T/dump.txt"

# a write(2) into the page cache asks nothing: no GETXATTR per write
tr=/sys/kernel/tracing
[ -d "$tr/events/fuse" ] || mount -t tracefs nodev "$tr" 2>/dev/null
if [ -w "$tr/events/fuse/fuse_request_send/enable" ]; then
	dd if=/dev/zero of="$M/w" bs=4k count=16 2>/dev/null
	dev=$(stat -c %d "$M")
	on=$(cat "$tr/tracing_on")
	echo "connection == $dev" >"$tr/events/fuse/fuse_request_send/filter"
	echo >"$tr/trace"
	echo 1 >"$tr/tracing_on"
	echo 1 >"$tr/events/fuse/fuse_request_send/enable"
	dd if=/dev/zero of="$M/w" bs=4k count=2000 conv=notrunc 2>/dev/null
	echo 0 >"$tr/events/fuse/fuse_request_send/enable"
	echo 0 >"$tr/events/fuse/fuse_request_send/filter"
	echo "$on" >"$tr/tracing_on"
	n=$(grep -c 'FUSE_GETXATTR' "$tr/trace")
	check "2000 write(2)s asked GETXATTR at most twice (asked $n times)" [ "$n" -le 2 ]
	check "the trace saw the writes" grep -q 'FUSE_WRITE' "$tr/trace"
else
	say "no fuse tracepoints here: the GETXATTR count is not checked"
fi
finish
