#!/bin/bash
# rename: plain, over an existing file and directory, across directories,
# RENAME_NOREPLACE, RENAME_EXCHANGE; error codes as on the native filesystem.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M"
cd "$M" || exit 1
mkdir d1 d2; echo one >d1/f; echo two >d2/g
mv d1/f d2/f
check "rename across directories" [ -f "$B/d2/f" ] && [ ! -e "$B/d1/f" ]
ino=$(stat -c %i d2/g)
mv d2/f d2/g
check_eq "rename over an existing file replaces it" one "$(cat d2/g)"
check "replaced inode is gone" [ "$(stat -c %i d2/g)" != "$ino" ]
mkdir -p x/empty y
mv y x/empty
check "rename a directory over an empty one" [ -d x/empty ] && [ ! -e y ]
echo a >na; echo b >nb
check_eq "noreplace onto an existing name" EEXIST "$("$FSOPS" rename2 na nb noreplace)"
check_eq "noreplace left the target" b "$(cat nb)"
check_eq "noreplace onto a free name" ok "$("$FSOPS" rename2 na nc noreplace)"
check_eq "exchange" ok "$("$FSOPS" rename2 nb nc exchange)"
check_eq "exchanged content 1" a "$(cat nb)"
check_eq "exchanged content 2" b "$(cat nc)"
sync nb
check_eq "exchange reached the backing" a "$(cat "$B/nb")"
mkdir ed; echo in >ed/f
check_eq "exchange a file and a directory" ok "$("$FSOPS" rename2 nb ed exchange)"
check_eq "directory now at the file's name" in "$(cat nb/f)"
check_eq "exchange with a missing name" ENOENT "$("$FSOPS" rename2 nc missing exchange)"
mkdir -p deep/er/est
echo z >deep/er/est/z
mv deep moved
check_eq "lookups under a renamed directory" z "$(cat moved/er/est/z)"
sync moved/er/est/z
check_eq "the backing agrees" z "$(cat "$B/moved/er/est/z")"
ln moved/er/est/z hl
mv hl hl2
check_eq "renamed hard link keeps the inode" "$(stat -c %i moved/er/est/z)" "$(stat -c %i hl2)"
cd /
finish
