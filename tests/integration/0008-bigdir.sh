#!/bin/bash
# A directory with 100,000 entries: create, list (every name exactly once,
# across many readdir calls), stat, remove.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M"
mkdir "$M/big"
check_eq "create 100k files" ok "$("$FSOPS" mkfiles "$M/big" 100000)"
check_eq "readdir count" 100000 "$(ls -f "$M/big" | grep -c '^f')"
check_eq "readdir lists each name once" 100000 "$(ls -f "$M/big" | grep '^f' | sort -u | wc -l)"
check_eq "backing has them all" 100000 "$(ls -f "$B/big" | grep -c '^f')"
check "stat of the last one" [ -f "$M/big/f0099999" ]
check_eq "find -type f (readdirplus + lookups)" 100000 "$(find "$M/big" -type f | wc -l)"
rm -rf "$M/big"
check "removed" [ ! -e "$B/big" ]
finish
