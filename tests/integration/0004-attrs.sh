#!/bin/bash
# chmod, chown, utimensat with nanoseconds, UTIME_NOW and UTIME_OMIT; xattrs in
# the user., trusted. and security. namespaces; POSIX ACLs.
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M"
cd "$M" || exit 1
echo x >f; mkdir d; ln -s f sl
chmod 4751 f
check_eq "chmod with setuid" 4751 "$(stat -c %a f)"
check_eq "chmod reached the backing" 4751 "$(stat -c %a "$B/f")"
chmod 0 f
check_eq "chmod 0" 0 "$(stat -c %a f)"
chmod 644 f
chown 1234:5678 f
check_eq "chown" 1234:5678 "$(stat -c %u:%g f)"
check_eq "chown reached the backing" 1234:5678 "$(stat -c %u:%g "$B/f")"
chown -h 42:43 sl
check_eq "lchown of a symlink" 42:43 "$(stat -c %u:%g sl)"
check_eq "lchown left the target" 1234:5678 "$(stat -c %u:%g f)"
chmod 6755 f; chown 1:1 f
check_eq "chown clears setuid/setgid as natively" 755 "$(stat -c %a f)"

check_eq "utimens explicit ns" ok "$("$FSOPS" utimens f 1000000000.123456789 1200000000.987654321)"
check_eq "atime ns" "1000000000.123456789" "$(stat -c %.9X f)"
check_eq "mtime ns" "1200000000.987654321" "$(stat -c %.9Y f)"
check_eq "mtime ns in the backing" "1200000000.987654321" "$(stat -c %.9Y "$B/f")"
check_eq "utimens omit atime" ok "$("$FSOPS" utimens f omit 1300000000.500000000)"
check_eq "atime kept with UTIME_OMIT" "1000000000.123456789" "$(stat -c %.9X f)"
check_eq "mtime set" "1300000000.500000000" "$(stat -c %.9Y f)"
before=$(date +%s)
check_eq "utimens now/omit" ok "$("$FSOPS" utimens f now omit)"
check "UTIME_NOW sets atime to now" [ "$(stat -c %X f)" -ge "$before" ]
check_eq "mtime kept with UTIME_OMIT" "1300000000.500000000" "$(stat -c %.9Y f)"
check_eq "utimens on a symlink itself" ok "$("$FSOPS" utimens -h sl 5.0 6.0)"
check_eq "symlink mtime" 6 "$(stat -c %Y sl)"
check "target mtime untouched" [ "$(stat -c %Y f)" != 6 ]
ctime1=$(stat -c %.9Z f); sleep 0.05; chmod 600 f
check "chmod updates ctime" [ "$(stat -c %.9Z f)" != "$ctime1" ]
for o in f d sl; do
	c1=$(stat -c %.9Z "$o"); b1=$(stat -c %.9Z "$B/$o"); sleep 0.05
	python3 -c "import os, sys; os.chown(sys.argv[1], -1, -1, follow_symlinks=False)" "$o"
	check "chown(-1,-1) updates ctime of $o" [ "$(stat -c %.9Z "$o")" != "$c1" ]
	# The kernel keeps its own clock for cached files: the backing ctime
	# moves too, to its own "now", not necessarily to the same nanosecond.
	check "the backing ctime moved too ($o)" [ "$(stat -c %.9Z "$B/$o")" != "$b1" ]
done

# xattrs
setfattr -n user.color -v blue f
check_eq "user xattr" blue "$(getfattr --only-values -n user.color f)"
check_eq "user xattr in the backing" blue "$(getfattr --only-values -n user.color "$B/f")"
setfattr -n trusted.t -v 1 f
setfattr -n security.s -v 2 f
check_eq "trusted xattr" 1 "$(getfattr --only-values -n trusted.t f)"
check_eq "security xattr" 2 "$(getfattr --only-values -n security.s f)"
head -c 3000 /dev/zero | tr '\0' v >"$T/big.val"
setfattr -n user.big -v "$(cat "$T/big.val")" d
check_eq "3000-byte xattr value on a directory" 3000 "$(getfattr --only-values -n user.big d | wc -c)"
check_eq "listxattr" "security.s trusted.t user.color" "$(getfattr -d -m - f 2>/dev/null | grep = | cut -d= -f1 | sort | tr '\n' ' ' | sed 's/ $//')"
setfattr -x user.color f
check "removexattr" eval "! getfattr -n user.color f 2>/dev/null"
setfattr -h -n trusted.sl -v 3 sl
check_eq "trusted xattr on a symlink itself" 3 "$(getfattr -h --only-values -n trusted.sl sl)"
check "symlink xattr not on the target" eval "! getfattr -n trusted.sl f 2>/dev/null"

# POSIX ACLs
setfacl -m u:1234:rw f
check "access ACL set" eval "getfacl -p f 2>/dev/null | grep -q '^user:1234:rw-'"
check "access ACL in the backing" eval "getfacl -p $B/f 2>/dev/null | grep -q '^user:1234:rw-'"
check_eq "ACL mask shows in the group bits" 660 "$(stat -c %a f)"
setfacl -d -m u:4321:rx d
touch d/child; mkdir d/sub
check "default ACL inherited by a file" eval "getfacl -p d/child 2>/dev/null | grep -q '^user:4321:r-x'"
check "default ACL inherited by a directory" eval "getfacl -p d/sub 2>/dev/null | grep -q '^default:user:4321:r-x'"
setfacl -b f
check "ACL removed" eval "! getfacl -p f 2>/dev/null | grep -q '^user:1234'"
cd /
# Times set right after a write wait in the daemon behind the write's apply;
# the reply (what the kernel caches) must already show them.
mkdir "$M/fresh"
stale=0
for i in $(seq 1 150); do
	echo "$i" >"$M/fresh/f$i"
	touch -a -d @1000000000.5 "$M/fresh/f$i"
	[ "$(stat -c %.1X "$M/fresh/f$i")" = 1000000000.5 ] || stale=$((stale + 1))
done
check_eq "atime set just after a write shows at once (150 files)" 0 "$stale"
finish
