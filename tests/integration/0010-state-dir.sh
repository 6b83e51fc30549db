#!/bin/bash
# The state directory never shows in the mounted tree and cannot be reached,
# created, renamed or removed through it.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M"
echo x >"$M/visible"
check_eq "readdir hides .drfs" visible "$(ls -A "$M")"
check "lookup of .drfs fails" eval "! stat $M/.drfs 2>/dev/null"
check "cannot read the configuration" eval "! cat $M/.drfs/drfs.conf 2>/dev/null"
check "cannot create .drfs" eval "! mkdir $M/.drfs 2>/dev/null"
check "cannot create a file named .drfs" eval "! touch $M/.drfs 2>/dev/null"
check "cannot rename onto .drfs" eval "! mv $M/visible $M/.drfs 2>/dev/null"
check "cannot link as .drfs" eval "! ln $M/visible $M/.drfs 2>/dev/null"
check "cannot symlink as .drfs" eval "! ln -s x $M/.drfs 2>/dev/null"
check "configuration intact" grep -q '^format=1$' "$B/.drfs/drfs.conf"
check_eq "visible survived" x "$(cat "$M/visible")"
mkdir "$M/sub"; mkdir "$M/sub/.drfs"
check "a .drfs below the root is an ordinary name" [ -d "$B/sub/.drfs" ]
check_eq "find sees no state" "" "$(find "$M" -path '*/.drfs/*')"
finish
