#!/bin/bash
# Objects are created with the caller's uid and gid, setgid directories pass
# their group on, the caller's umask applies unless a default ACL is there,
# and permissions hold for non-root users (allow_other, default_permissions).
. "$(dirname "$0")/lib.sh"
B=$(new_backing b); M=$T/m
mount_drfs "$B" "$M" allow_other
chmod 755 "$T"
as() { local u=$1; shift; setpriv --reuid="${u%%:*}" --regid="${u##*:}" --clear-groups -- "$@"; }
asg() { local u=$1 g=$2; shift 2; setpriv --reuid="${u%%:*}" --regid="${u##*:}" --groups="$g" -- "$@"; }
mkdir -m 1777 "$M/pub"
as 1000:1000 sh -c "umask 022; echo mine >$M/pub/f; mkdir $M/pub/d; ln -s f $M/pub/l; mkfifo $M/pub/p"
for o in f d p; do
	check_eq "owner of $o created by uid 1000" 1000:1000 "$(stat -c %u:%g "$M/pub/$o")"
	check_eq "owner of $o in the backing" 1000:1000 "$(stat -c %u:%g "$B/pub/$o")"
done
check_eq "symlink owner" 1000:1000 "$(stat -c %u:%g "$M/pub/l")"
check_eq "umask 022 applied to a file" 644 "$(stat -c %a "$M/pub/f")"
check_eq "umask 022 applied to a directory" 755 "$(stat -c %a "$M/pub/d")"
as 1000:1000 sh -c "umask 077; echo x >$M/pub/private"
check_eq "umask 077 applied" 600 "$(stat -c %a "$M/pub/private")"
check "another user cannot read it" eval "! as 1001:1001 cat $M/pub/private 2>/dev/null"
check "another user cannot delete it from a sticky dir" eval "! as 1001:1001 rm -f $M/pub/private 2>/dev/null"
check "owner can delete it" as 1000:1000 rm "$M/pub/private"

# setgid directory: group inherited, setgid bit inherited by subdirectories
mkdir -m 2777 "$M/sg"; chgrp 4242 "$M/sg"
as 1000:1000 sh -c "echo x >$M/sg/f; mkdir $M/sg/sub"
check_eq "file in a setgid dir takes its group" 1000:4242 "$(stat -c %u:%g "$M/sg/f")"
check_eq "subdirectory takes the group" 1000:4242 "$(stat -c %u:%g "$M/sg/sub")"
check "subdirectory inherits setgid" [ -g "$M/sg/sub" ]
# a non-member creating a setgid file in it loses the setgid bit, as natively
as 1000:1000 sh -c "umask 0; touch $M/sg/x; chmod 2755 $M/sg/x 2>/dev/null"
check "non-member cannot keep setgid" [ ! -g "$M/sg/x" ]
asg 1000:1000 4242 sh -c "umask 0; touch $M/sg/y; chmod 2755 $M/sg/y"
check "member can set setgid" [ -g "$M/sg/y" ]

# supplementary groups give access through group permissions
mkdir -m 0770 "$M/team"; chgrp 5000 "$M/team"
check "group member may create" asg 1000:1000 5000 touch "$M/team/ok"
check "non-member may not" eval "! as 1000:1000 touch $M/team/no 2>/dev/null"
check_eq "member's file owner" 1000:1000 "$(stat -c %u:%g "$M/team/ok")"

# a default ACL replaces the umask
mkdir "$M/acl"; chmod 777 "$M/acl"; setfacl -d -m u::rwx,g::rwx,o::rwx "$M/acl"
as 1000:1000 sh -c "umask 077; mkdir $M/acl/d; touch $M/acl/f"
check_eq "default ACL wins over umask (dir)" 777 "$(stat -c %a "$M/acl/d")"
check_eq "default ACL wins over umask (file)" 666 "$(stat -c %a "$M/acl/f")"
# an ACL grant is honoured by the kernel's permission check
echo s >"$M/secret"; chmod 600 "$M/secret"
check "no access before the ACL" eval "! as 1000:1000 cat $M/secret >/dev/null 2>&1"
setfacl -m u:1000:r "$M/secret"
check "ACL grants read" as 1000:1000 cat "$M/secret"
# setting an ACL rewrites the mode: setgid is cleared for a non-member, kept for a member
for who in member nonmember; do
	mkdir -p "$M/aclsg"; chmod 777 "$M/aclsg"
	touch "$M/aclsg/$who"; chown 1000:4242 "$M/aclsg/$who"; chmod 2755 "$M/aclsg/$who"
	if [ $who = member ]; then g=4242; else g=1000; fi
	setpriv --reuid=1000 --regid=$g --clear-groups -- setfacl -m u::rwx,g::rwx,o::rwx "$M/aclsg/$who"
done
check "setfacl by a group member keeps setgid" [ -g "$M/aclsg/member" ]
check "setfacl by a non-member clears setgid" [ ! -g "$M/aclsg/nonmember" ]
check "setgid cleared in the backing too" [ ! -g "$B/aclsg/nonmember" ]
# write, truncate and fallocate by an unprivileged non-member clear setuid and setgid
mkdir -p "$M/kill"; chmod 777 "$M/kill"
for op in write truncate fallocate; do
	for mode in 6666 6676 2676; do
		f="$M/kill/$op-$mode"; : >"$f"; chmod $mode "$f"
		case $op in
		write) as 1000:1000 sh -c "echo x >>$f" ;;
		truncate) as 1000:1000 truncate -s 100 "$f" ;;
		fallocate) as 1000:1000 fallocate -l 4096 "$f" ;;
		esac
		check_eq "$op by a non-member clears set-id bits of $mode" "${mode#?}" "$(stat -c %a "$f")"
	done
	f="$M/kill/$op-root"; : >"$f"; chmod 6666 "$f"; echo x >>"$f"
	check_eq "root keeps set-id bits on write" 6666 "$(stat -c %a "$f")"
done
# a user's chmod/chown obey the rules
as 1000:1000 touch "$M/pub/own"
check "owner may chmod" as 1000:1000 chmod 600 "$M/pub/own"
check "owner may not give the file away" eval "! as 1000:1000 chown 1001 $M/pub/own 2>/dev/null"
check "others may not chmod" eval "! as 1001:1001 chmod 777 $M/pub/own 2>/dev/null"
check "others may not touch -d" eval "! as 1001:1001 touch -d 2001-01-01 $M/pub/own 2>/dev/null"
finish
