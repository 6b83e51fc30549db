#!/bin/bash
# Error codes: the same list of failing operations on a plain directory and
# on the mount must give the same results, for root and for an unprivileged
# user (with allow_other; permissions are checked by the kernel).
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M" allow_other
mkdir -p "$T/native"
chmod 755 "$T" "$T/native" "$M"
"$FSOPS" battery "$T/native" 65534:65534 >"$T/native.out" 2>&1
"$FSOPS" battery "$M" 65534:65534 >"$T/mount.out" 2>&1
check "the battery ran" [ "$(wc -l <"$T/native.out")" -ge 60 ]
check_eq "same results as the native filesystem" "$(cat "$T/native.out")" "$(cat "$T/mount.out")"
if ! cmp -s "$T/native.out" "$T/mount.out"; then diff "$T/native.out" "$T/mount.out"; fi
# The oracle itself must be right on the codes that matter most.
for want in "rmdir nonempty: ENOTEMPTY" "rename noreplace existing: EEXIST" \
	"open symlink loop: ELOOP" "create 256-byte name: ENAMETOOLONG" \
	"rename to /proc (cross-device): EXDEV" "user: create in root dir: EACCES" \
	"user: chown root file: EPERM" "user: unlink in sticky dir: EPERM" \
	"owner of user's file: 65534:65534 mode 600"; do
	check "mount gives '$want'" grep -qF "$want" "$T/mount.out"
done
finish
