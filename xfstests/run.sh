#!/bin/bash
# Run the upstream xfstests suite against the installed drfs.
#
#   xfstests/run.sh                  # ./check -g quick
#   xfstests/run.sh generic/001 generic/013
#   xfstests/run.sh -g auto
#
# Environment:
#   XFSTESTS_DIR   built xfstests checkout (default /tmp/ext/xfstests)
#   DRFS_XFS_WORK  backing directories and mount points (default /var/tmp/drfs-xfstests)
#   DRFS_XFS_BACKING_FS    filesystem for the backing directories: ext4 (default)
#                  or xfs on a loop-mounted image made afresh each run, or "none"
#                  for plain directories on the disk that holds DRFS_XFS_WORK
#                  (then tests that fill the filesystem fill that disk)
#   DRFS_XFS_BACKING_SIZE  size of that image (default 10G; sparse)
#   DRFS_XFS_UMOUNT_WAIT  0 (default): plain umount(8).  1: xfstests unmounts
#                  through ./umount-wait, which waits until the drfs daemon has
#                  released the backing.  drfs mount itself now waits for a
#                  daemon that is finishing, so this is only for older builds.
#
# Needs root.  Uses /sbin/mount.fuse.drfs as installed by "make install".
# Writes $XFSTESTS_DIR/local.config, runs ./check with -E expected-failures,
# and copies the console log and summary to xfstests/results/.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XFSTESTS_DIR=${XFSTESTS_DIR:-/tmp/ext/xfstests}
WORK=${DRFS_XFS_WORK:-/var/tmp/drfs-xfstests}
TEST_NAME=drfs-xfstests-test
SCRATCH_NAME=drfs-xfstests-scratch

die() { echo "run.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (xfstests mounts and unmounts)"

# --- xfstests must already be built; this script never builds it -----------
if [ ! -x "$XFSTESTS_DIR/check" ] || [ ! -x "$XFSTESTS_DIR/ltp/fsstress" ] ||
   [ ! -x "$XFSTESTS_DIR/src/open_by_handle" ]; then
	cat >&2 <<EOF
run.sh: no built xfstests in $XFSTESTS_DIR (set XFSTESTS_DIR).
Build it outside this repository, for example:
  apt-get install -y xfslibs-dev uuid-dev libtool-bin e2fsprogs automake gcc \\
      libuuid1 quota attr acl make libacl1-dev libaio-dev xfsprogs libgdbm-dev \\
      gawk fio dbench uuid-runtime python3 sqlite3 libcap-dev liburing-dev bc psmisc
  git clone <kdave/xfstests or git.kernel.org fstests> $XFSTESTS_DIR
  make -C $XFSTESTS_DIR -j2
EOF
	exit 1
fi

[ -x /sbin/mount.fuse.drfs ] || die "/sbin/mount.fuse.drfs missing: run 'make install' in the drfs tree"
DRFS=$(command -v drfs || echo /usr/local/bin/drfs)
[ -x "$DRFS" ] || die "drfs not installed: run 'make install'"
BACKING_FS=${DRFS_XFS_BACKING_FS:-ext4}
case "$BACKING_FS" in
ext4|xfs) command -v "mkfs.$BACKING_FS" >/dev/null || die "mkfs.$BACKING_FS missing (apt-get install e2fsprogs xfsprogs)" ;;
none) ;;
*) die "DRFS_XFS_BACKING_FS must be ext4, xfs or none" ;;
esac

# --- users and group the suite expects ----------------------------------------
for g in fsgqa fsgqa2; do
	getent group "$g" >/dev/null || groupadd "$g" || die "cannot create group $g"
done
for u in fsgqa fsgqa2 123456-fsgqa; do
	id "$u" >/dev/null 2>&1 && continue
	useradd -m -g fsgqa "$u" 2>/dev/null || useradd -m -g fsgqa --badname "$u" ||
		die "cannot create user $u"
done

# --- mounts: only ours, found by fsname ----------------------------------------
mnt_of() { awk -v d="$1" '$1 == d { print $2 }' /proc/mounts; }
unmount_ours() {
	local name m
	for name in "$SCRATCH_NAME" "$TEST_NAME"; do
		for m in $(mnt_of "$name"); do
			umount "$m" 2>/dev/null || "$DRFS" umount "$m" 2>/dev/null ||
				umount -l "$m" 2>/dev/null
		done
	done
	# umount(8) returns before the daemon exits: wait (up to 10 s) for each
	# daemon to release its backing directory before touching the backing
	local fs lock
	for fs in test scratch; do
		lock="$WORK/backing/$fs/.drfs/lock"
		[ -f "$lock" ] || continue
		for _ in $(seq 100); do
			flock -n "$lock" true 2>/dev/null && break
			sleep 0.1
		done
	done
}
unmount_backing() {
	# the loop-mounted image this script mounted on $WORK/backing, if any
	if [ "$(awk -v m="$WORK/backing" '$2 == m { print $1 }' /proc/mounts)" != "" ] &&
	   [ -f "$WORK/backing.img" ]; then
		umount "$WORK/backing" 2>/dev/null || umount -l "$WORK/backing"
	fi
	rm -f "$WORK/backing.img"
}
cleanup() {
	unmount_ours
	unmount_backing
}
unmount_ours
unmount_backing
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- backing directories -------------------------------------------------------
mkdir -p "$WORK/mnt/test" "$WORK/mnt/scratch" "$WORK/backing" || die "cannot create $WORK"
if [ "$BACKING_FS" != none ]; then
	rm -f "$WORK/backing.img"
	truncate -s "${DRFS_XFS_BACKING_SIZE:-10G}" "$WORK/backing.img" || die "cannot create $WORK/backing.img"
	if [ "$BACKING_FS" = xfs ]; then
		mkfs.xfs -q -f "$WORK/backing.img" || die "mkfs.xfs failed"
	else
		mkfs.ext4 -q -F "$WORK/backing.img" || die "mkfs.ext4 failed"
	fi
	mount -o loop "$WORK/backing.img" "$WORK/backing" ||
		die "cannot loop-mount $WORK/backing.img (set DRFS_XFS_BACKING_FS=none to use plain directories)"
fi
for fs in test scratch; do
	rm -rf "${WORK:?}/backing/$fs"
	"$DRFS" init "$WORK/backing/$fs" >/dev/null || die "drfs init $WORK/backing/$fs failed"
done

# --- local.config ------------------------------------------------------------------
cfg="$XFSTESTS_DIR/local.config"
if [ -f "$cfg" ] && ! grep -q '^# generated by drfs xfstests/run.sh' "$cfg"; then
	cp "$cfg" "$cfg.orig.$(date +%s)"
fi
{
	echo "# generated by drfs xfstests/run.sh from $here/local.config.in"
	sed "s|@WORKDIR@|$WORK|g" "$here/local.config.in"
	if [ "${DRFS_XFS_UMOUNT_WAIT:-0}" = 1 ]; then
		echo "export DRFS_XFS_WORK=$WORK"
		echo "export UMOUNT_PROG=$here/umount-wait"
	fi
} > "$cfg" || die "cannot write $cfg"

# --- run -----------------------------------------------------------------------------
[ $# -gt 0 ] || set -- -g quick
stamp=$(date +%Y%m%d-%H%M%S)
mkdir -p "$here/results"
log="$WORK/check-$stamp.log"
commit=$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown)
{
	echo "# drfs xfstests run $stamp"
	echo "# drfs commit $commit (HEAD); $("$DRFS" version 2>/dev/null | head -1), installed $(stat -c %y "$DRFS" | cut -d. -f1)"
	echo "# xfstests $(git -C "$XFSTESTS_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
	echo "# ./check -E expected-failures $*"
	echo "# backing: ${BACKING_FS/none/plain directories} in $WORK/backing"
	[ "${DRFS_XFS_UMOUNT_WAIT:-0}" = 1 ] && echo "# DRFS_XFS_UMOUNT_WAIT=1: umount waits for the daemon"
} > "$log"

# per-test results of earlier runs would mix with this run's
rm -rf "$XFSTESTS_DIR"/results/*/
# xfstests' FSTYP=fuse expects the kernel type "fuse"; drfs mounts as fuse.drfs.
# shim/df and shim/findmnt report fuse.drfs as fuse (see shim/).
(cd "$XFSTESTS_DIR" && PATH="$here/shim:$PATH" ./check -E "$here/expected-failures" "$@") 2>&1 |
	tee -a "$log"
rc=${PIPESTATUS[0]}

# --- summary into the repository ---------------------------------------------------
unmount_ours
for fs in test scratch; do
	cp "$WORK/backing/$fs/.drfs/drfs.log" "$WORK/drfs-$fs-$stamp.log" 2>/dev/null
done
out="$here/results/check-$stamp.log"
cp "$log" "$out"
{
	echo
	echo "# failing tests: $XFSTESTS_DIR/results/<test>.out.bad and .full"
	echo "# drfs logs: copied to $WORK/drfs-{test,scratch}-$stamp.log"
	echo "# check exit status $rc"
} >> "$out"
echo "run.sh: summary in $out (check exit status $rc)"
exit "$rc"
