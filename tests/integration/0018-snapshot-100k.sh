#!/bin/bash
# A tree of 100,000 files: the first snapshot, a restore and the snapshot
# mount give back the same tree (contents and metadata), and an incremental
# snapshot after one change walks only the directories on the way to it.
. "$(dirname "$0")/lib.sh"
DIGEST="python3 $TOP/tests/helpers/treedigest.py"

B=$T/b
python3 - "$B" <<'PY'
import os, sys
top = sys.argv[1]
for d in range(400):
    p = os.path.join(top, "d%03d" % d, "sub%d" % (d % 7))
    os.makedirs(p)
    for f in range(250):
        name = os.path.join(p, "f%03d" % f)
        with open(name, "wb") as fh:
            fh.write(b"%d/%d " % (d, f) * (f % 13))
        os.utime(name, ns=(10**18 + d * 1000 + f, 10**18 + d * 1000 + f))
PY
check_eq "100,000 files made" 100000 "$(find "$B" -type f | wc -l)"
require "drfs init takes the first snapshot" "$DRFS" init "$B"
before=$($DIGEST "$B" --skip .drfs)

check "restore of 100,000 files" "$DRFS" restore "$B" latest "$T/r"
check_eq "restored tree equals the source" "$before" "$($DIGEST "$T/r")"
rm -rf "$T/r"

mkdir -p "$T/s"
MOUNTS+=("$T/s")
require "snapshot mount" "$DRFS" mount --snapshot latest "$B" "$T/s"
check_eq "the snapshot mount shows the same tree" "$($DIGEST "$B" --skip .drfs --no-root-mtime)" \
	"$($DIGEST "$T/s" --no-root-mtime)"
check "unmount the snapshot mount" "$DRFS" umount "$T/s"

# one change deep in the tree: the incremental snapshot walks its way only
M=$T/m
mount_drfs "$B" "$M"
echo changed >"$M/d123/sub4/f007"
umount_drfs "$M"
line=$(grep 'at unmount: snapshot' "$B/.drfs/drfs.log" | tail -1)
say "$line"
check "the incremental snapshot read one file" grep -q 'read 1 files' <<<"$line"
check "it walked 2 of 800 directories (d123 and its sub4)" grep -q 'walked 2 of 800 directories' <<<"$line"
jtree=$("$DRFS" snapshots "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["tree"])')
"$DRFS" snapshot "$B" --scan >/dev/null
check_eq "it equals a scan" "$jtree" \
	"$("$DRFS" snapshots "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["tree"])')"
finish
