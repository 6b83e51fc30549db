#!/bin/bash
# Snapshots: the first one at init of a directory holding data, one at every
# clean unmount built from the journal, restore with every attribute, diff,
# damage reported by name, and invariant 4: a snapshot built from the parent
# and the journal has the same root tree as a scan of the same tree.
. "$(dirname "$0")/lib.sh"
DIGEST="python3 $TOP/tests/helpers/treedigest.py"
LOAD="python3 $TOP/tests/helpers/snapload.py"
command -v setfacl >/dev/null || skip "setfacl is missing (package acl)"

# json_field JSON-LINE KEY: the value of KEY in the last snapshot of 'drfs snapshots --json'
last_field() {
	"$DRFS" snapshots "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1][sys.argv[1]])' "$2"
}
count_snaps() {
	"$DRFS" snapshots "$1" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}

# ---- a directory holding data becomes the first snapshot ----
B=$T/b
mkdir -p "$B/dir/sub" "$B/empty-dir" "$B/ünïcødé"
head -c 3000000 /dev/urandom >"$B/dir/random"
seq 1 200000 >"$B/dir/text"
: >"$B/empty"
printf 'x%.0s' $(seq 1 10) >"$B/ünïcødé/名前"
long=$(printf 'n%.0s' $(seq 1 255)); echo long >"$B/dir/$long"
ln "$B/dir/text" "$B/dir/sub/text-link"
ln -s ../dir/text "$B/empty-dir/symlink"
ln -s /nowhere "$B/dangling"
mkfifo "$B/fifo"
mknod "$B/chardev" c 1 3
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$B/socket"
truncate -s 100M "$B/sparse"; printf 'middle' | dd of="$B/sparse" bs=1 seek=50000000 conv=notrunc status=none
printf 'end' | dd of="$B/sparse" bs=1 seek=104857597 conv=notrunc status=none
setfattr -n user.color -v blue "$B/dir/text"
setfattr -n trusted.t -v 1 "$B/dir"
setfacl -m u:1000:rwx "$B/dir/sub"
setfacl -d -m g:1000:rx "$B/dir/sub"
chown 1000:1001 "$B/dir/random"; chmod 4755 "$B/dir/random"; chmod 700 "$B"
touch -h -d '2001-02-03 04:05:06.123456789' "$B/dangling"
touch -d '1999-12-31 23:59:59.5' "$B/dir/sub"
require "drfs init on a directory holding data" "$DRFS" init "$B"
check_eq "init took the first snapshot" 1 "$(count_snaps "$B")"
check_eq "the first snapshot is a scan" scan "$(last_field "$B" source)"
before=$($DIGEST "$B" --skip .drfs)
repo_sum() { find "$B/.drfs/repo" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum; }
repo_before=$(repo_sum)

check "restore of the first snapshot" "$DRFS" restore "$B" latest "$T/r1"
check_eq "restored tree equals the source (contents, modes, owners, mtimes, xattrs, ACLs, links, holes, specials)" \
	"$before" "$($DIGEST "$T/r1")"
check_eq "the sparse file is restored sparse" 1 "$([ "$(du -k "$T/r1/sparse" | cut -f1)" -lt 1024 ] && echo 1)"
check_eq "reads leave the repository as it was" "$repo_before" "$(repo_sum)"
check_exit "restore into a non-empty directory refuses" 1 "$DRFS" restore "$B" latest "$T/r1"
check_err "refusal names the directory and --force" "r1 is not empty.*--force"
check_exit "unknown snapshot" 1 "$DRFS" restore "$B" deadbeefdeadbeef "$T/r-none"
check_err "unknown snapshot names what was asked" "no snapshot matches 'deadbeefdeadbeef'"
check_exit "@TIME before the first snapshot" 1 "$DRFS" restore "$B" @2000-01-01T00:00:00Z "$T/r-none"

# ---- every clean unmount adds a snapshot built from the journal ----
M=$T/m
for round in 1 2 3; do
	mount_drfs "$B" "$M"
	$LOAD "$M" "$round" 150 --big $((24 << 20)) >/dev/null
	umount_drfs "$M"
	# init, then per round one at unmount and one --scan
	check_eq "round $round: a snapshot at unmount" $((2 * round)) "$(count_snaps "$B")"
	check_eq "round $round: built from the journal" journal "$(last_field "$B" source)"
	jtree=$(last_field "$B" tree)
	check "round $round: snapshot --scan" "$DRFS" snapshot "$B" --scan --tag scan$round
	check_eq "round $round: journal-built root tree equals the scan's (invariant 4)" \
		"$jtree" "$(last_field "$B" tree)"
	digest=$($DIGEST "$B" --skip .drfs)
	check "round $round: restore" "$DRFS" restore "$B" latest "$T/r$((round + 1))"
	check_eq "round $round: restored tree equals the backing" "$digest" "$($DIGEST "$T/r$((round + 1))")"
done

# ---- incremental cost on a 1 GiB file: 100 scattered 8 KiB pages, then 1 MiB appended ----
# last_unmount_field N: field N of the last "at unmount" line: read bytes, new chunk bytes, added
last_unmount() {
	grep 'at unmount: snapshot' "$B/.drfs/drfs.log" | tail -1 |
		sed -n 's/.*; read [0-9]* files, \([0-9]*\) bytes; [0-9]* new chunks, \([0-9]*\) bytes; added \([0-9]*\) bytes;.*/\1 \2 \3/p'
}
mount_drfs "$B" "$M"
head -c $((1 << 30)) /dev/urandom >"$M/huge"
umount_drfs "$M"
mount_drfs "$B" "$M"
python3 - "$M/huge" <<'PY'
import os, random, sys
r = random.Random(7)
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(100):
    os.pwrite(fd, r.randbytes(8192), r.randrange(0, (1 << 30) - 8192) & ~8191)
os.close(fd)
PY
umount_drfs "$M"
read -r rd newb added <<<"$(last_unmount)"
say "100 pages of 8 KiB in 1 GiB: read $rd bytes, new chunks $newb bytes, added $added bytes"
check "100 pages: added ($added) < 2 MiB + the new chunks ($newb)" [ "${added:-x}" -lt $(( (2 << 20) + ${newb:-0} )) ]
check "100 pages: read ($rd) no more than the chunks around them (100 x 2 x 256 KiB)" \
	[ "${rd:-x}" -le $((100 * 2 * (256 << 10))) ]
jtree=$(last_field "$B" tree)
"$DRFS" snapshot "$B" --scan >/dev/null
check_eq "100 pages: journal-built root tree equals the scan's" "$jtree" "$(last_field "$B" tree)"
mount_drfs "$B" "$M"
head -c $((1 << 20)) /dev/urandom >>"$M/huge"
umount_drfs "$M"
read -r rd newb added <<<"$(last_unmount)"
say "1 MiB appended to 1 GiB: read $rd bytes, new chunks $newb bytes, added $added bytes"
check "append: added ($added) < 2 MiB + the new chunks ($newb)" [ "${added:-x}" -lt $(( (2 << 20) + ${newb:-0} )) ]
check "append: read ($rd) no more than the appended MiB and the last old chunks" \
	[ "${rd:-x}" -le $(( (1 << 20) + 2 * (256 << 10) )) ]
jtree=$(last_field "$B" tree)
"$DRFS" snapshot "$B" --scan >/dev/null
check_eq "append: journal-built root tree equals the scan's" "$jtree" "$(last_field "$B" tree)"
# the rest of the test has no use for a 1 GiB file
mount_drfs "$B" "$M"
rm "$M/huge"
umount_drfs "$M"

# ---- preallocated ranges: invariant 4 whatever has read them ----
# ext4's SEEK_HOLE calls an unwritten extent a hole until something reads it
# into the page cache; the chunk list must not depend on that.
DRFS_SNAPSHOT_VERIFY=1 mount_drfs "$B" "$M"
mkdir "$M/prealloc"; P=$M/prealloc
printf 'twelve bytes' >"$P/grow"; fallocate -l 8192 "$P/grow"
head -c 100000 /dev/urandom >"$P/keep"; fallocate -n -o 100000 -l 1000000 "$P/keep"
head -c 300000 /dev/urandom >"$P/punch"; fallocate -p -o 65536 -l 131072 "$P/punch"
head -c 300000 /dev/urandom >"$P/zero"; fallocate -z -o 4096 -l 200000 "$P/zero"
truncate -s 10M "$P/sparse"; fallocate -n -o 3M -l 2M "$P/sparse"; printf 'x' | dd of="$P/sparse" bs=1 seek=4M conv=notrunc status=none
check "preallocated, unread: journal-built tree equals the scan's" "$DRFS" snapshot "$M" --tag prealloc1
cat "$P"/* >/dev/null; cat "$B"/prealloc/* >/dev/null
fallocate -l 16384 "$P/grow"; printf 'y' | dd of="$P/sparse" bs=1 seek=3M conv=notrunc status=none
check "preallocated, read through the mount and the backing: still equal" "$DRFS" snapshot "$M" --tag prealloc2
pre2=$("$DRFS" snapshots "$B" --json | python3 -c 'import json,sys; print([s["id"] for s in json.load(sys.stdin) if s["tags"] == "prealloc2"][0])')
"$DRFS" restore "$B" "$pre2" "$T/r-prealloc" >/dev/null
check "preallocated ranges restore as the mount shows them (zeros)" diff -r "$P" "$T/r-prealloc/prealloc"
rm -r "$P" "$T/r-prealloc"
umount_drfs "$M"

# ---- live snapshots while a writer runs: each one equals a scan of the frozen tree ----
DRFS_SNAPSHOT_VERIFY=1 mount_drfs "$B" "$M"
( seed=100; while [ ! -e "$T/stop" ]; do $LOAD "$M" $((seed += 1)) 20 >/dev/null 2>&1 || true; done ) &
writer=$!
PIDS+=("$writer")
n_before=$(count_snaps "$B")
for i in 1 2 3; do
	sleep 1
	check "live snapshot $i while writing (journal-built tree equals the scan's)" "$DRFS" snapshot "$M" --tag live$i
done
touch "$T/stop"; wait "$writer"
check_eq "three live snapshots, each with its verify scan" $((n_before + 6)) "$(count_snaps "$B")"
check_exit "snapshot --scan of a mounted backing is refused" 2 "$DRFS" snapshot "$M" --scan
echo after >"$M/after-live"
umount_drfs "$M"
check_eq "the snapshot at unmount follows the live ones" journal "$(last_field "$B" source)"

# ---- snapshot_interval ----
mount_drfs "$B" "$M" snapshot_interval=1
echo tick >"$M/tick"
n_before=$(count_snaps "$B")
for _ in $(seq 1 50); do [ "$(count_snaps "$B")" -gt "$n_before" ] && break; sleep 0.2; done
check "snapshot_interval=1 took a snapshot after a change" [ "$(count_snaps "$B")" -gt "$n_before" ]
umount_drfs "$M"
check_exit "bad snapshot_interval" 2 "$DRFS" mount "$B" "$M" -o snapshot_interval=often
check_err "bad snapshot_interval names the option" "snapshot_interval=often"

# ---- an unmount with nothing changed takes no snapshot ----
n_before=$(count_snaps "$B")
mount_drfs "$B" "$M"
umount_drfs "$M"
check_eq "no change, no snapshot at unmount" "$n_before" "$(count_snaps "$B")"
check "the log says why" grep -q 'at unmount: no change since snapshot' "$B/.drfs/drfs.log"

# ---- status tells the latest snapshot ----
st_count=$("$DRFS" status "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"]["count"])')
check_eq "status --json counts the snapshots" "$(count_snaps "$B")" "$st_count"
check_eq "status --json names the latest" "$(last_field "$B" id)" \
	"$("$DRFS" status "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"]["latest"])')"
check "status shows the snapshots line" eval "\"$DRFS\" status \"$B\" | grep -q '^snapshots:   [0-9]*; latest '"

# ---- diff ----
first=$("$DRFS" snapshots "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"][:16])')
"$DRFS" diff "$B" "$first" latest >"$T/diff.out" 2>"$T/diff.err"
check "diff lists the added file" grep -qx '+  /tick' "$T/diff.out"
check "diff counts" grep -q 'added, .* removed, .* changed' "$T/diff.err"
check_eq "diff of a snapshot with itself is empty" "" "$("$DRFS" diff "$B" latest latest 2>/dev/null)"

# ---- damage: a flipped byte in a data pack is named on read ----
# one byte of every data pack (type 1) flipped at 4096; the first snapshot's
# blobs fill the first pack written, so restoring it meets a damaged one
packs=""
for p in "$B"/.drfs/repo/packs/*/*.pack; do
	[ "$(od -An -tu4 -j12 -N4 "$p" | tr -d ' ')" = 1 ] && [ "$(stat -c %s "$p")" -gt 8192 ] || continue
	packs="$packs $(basename "$p" .pack)"
	python3 - "$p" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(4096)
    b = f.read(1)
    f.seek(4096)
    f.write(bytes([b[0] ^ 0x40]))
PY
done
check_exit "restore from a damaged pack fails" 1 "$DRFS" restore "$B" "$first" "$T/r-bad"
named=""
for id in $packs; do grep -q "$id" "$T/last.err" && named=$id; done
check "the error names the damaged pack" [ -n "$named" ]
check "the error names the chunk" grep -Eq 'chunk [0-9a-f]{64}' "$T/last.err"
check "the error names the file" grep -q "$T/r-bad/" "$T/last.err"
check_err "the error is one line: file, chunk, pack" "r-bad/.*chunk [0-9a-f]{64} \(pack [0-9a-f]{64}\)"

# ---- a damaged index file is named in one line; nothing is read past it ----
cp -a "$B/.drfs/repo" "$T/repo-copy"
idx=$(ls "$T"/repo-copy/index/*.idx | head -1)
printf 'X' | dd of="$idx" bs=1 seek=30 conv=notrunc status=none
check_exit "a damaged index file stops the listing" 1 "$DRFS" snapshots "file://$T/repo-copy"
check_err "one line naming the index file" "index file .*$(basename "$idx") is damaged"

finish
