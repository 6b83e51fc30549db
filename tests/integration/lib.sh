# Sourced by every integration test.  Gives each test a private scratch
# directory, mounts drfs there on request, and on exit (pass, fail or
# signal) unmounts every mount and kills every daemon it started, by PID.
#
# A test calls ok/fail through check_* helpers and ends with `finish`, which
# exits 0 when nothing failed, 1 otherwise.  `skip REASON` exits 77.

set -u
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DRFS=${DRFS:-$TOP/drfs}
FSOPS=$TOP/tests/helpers/fsops
NAME=$(basename "$0" .sh)
T=$(mktemp -d "/tmp/drfs-$NAME.XXXXXX")
MOUNTS=()
PIDS=()
FAILS=0
CHECKS=0

cleanup() {
	local m p
	for m in "${MOUNTS[@]}"; do
		# /proc/mounts also lists a mount whose daemon died (mountpoint(1) fails on it)
		if awk -v m="$m" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; then
			"$DRFS" umount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null
		fi
	done
	for p in "${PIDS[@]}"; do
		kill -9 "$p" 2>/dev/null
	done
	# a snapshot mount's log outlives it (/run/drfs/HASH.log): ours go with us
	grep -lsF -- "$T/" /run/drfs/*.log | xargs -r rm -f
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

say() { printf '%s: %s\n' "$NAME" "$*"; }

pass() { CHECKS=$((CHECKS + 1)); }
fail() { CHECKS=$((CHECKS + 1)); FAILS=$((FAILS + 1)); say "FAIL: $*"; }

# check DESCRIPTION COMMAND...: the command must succeed.
check() {
	local what=$1; shift
	if "$@"; then pass; else fail "$what (command: $*)"; fi
}
# require DESCRIPTION COMMAND...: like check, but the test stops at a failure.
require() {
	check "$@"
	[ "$FAILS" -eq 0 ] || { say "stopping: the rest depends on this"; exit 1; }
}
# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
	if [ "$2" = "$3" ]; then pass; else fail "$1: expected '$2', got '$3'"; fi
}
# check_exit DESCRIPTION CODE COMMAND...: the command must exit with CODE.
check_exit() {
	local what=$1 code=$2 rc; shift 2
	"$@" >"$T/last.out" 2>"$T/last.err"; rc=$?
	if [ "$rc" = "$code" ]; then pass; else
		fail "$what: exit $rc, expected $code ($(head -c 300 "$T/last.err"))"
	fi
}
# check_err DESCRIPTION PATTERN: the last check_exit's stderr matches PATTERN, on one line.
check_err() {
	if [ "$(wc -l <"$T/last.err")" -eq 1 ] && grep -Eq "$2" "$T/last.err"; then pass; else
		fail "$1: stderr '$(cat "$T/last.err")' does not match /$2/ on one line"
	fi
}

skip() { say "SKIP: $*"; exit 77; }

finish() {
	if [ "$FAILS" -eq 0 ]; then
		say "ok ($CHECKS checks)"
		exit 0
	fi
	say "$FAILS of $CHECKS checks failed"
	exit 1
}

# daemon_pid BACKING: the PID recorded by the mount of BACKING.
daemon_pid() { sed -n 's/^pid=//p' "$1/.drfs/mount" 2>/dev/null; }

# new_backing NAME: an initialised backing directory $T/NAME.
new_backing() {
	"$DRFS" init "$T/$1" >/dev/null || { say "drfs init $T/$1 failed"; exit 1; }
	echo "$T/$1"
}

# mount_drfs BACKING MOUNTPOINT [OPTIONS]: mounts and registers for cleanup.
mount_drfs() {
	local b=$1 m=$2 o=${3:-}
	mkdir -p "$m"
	MOUNTS+=("$m")
	if [ -n "$o" ]; then
		"$DRFS" mount "$b" "$m" -o "$o" || { say "mount $b on $m failed"; exit 1; }
	else
		"$DRFS" mount "$b" "$m" || { say "mount $b on $m failed"; exit 1; }
	fi
	PIDS+=("$(daemon_pid "$b")")
}

umount_drfs() { "$DRFS" umount "$1"; }

# tree_digest DIR: one line per entry with type, mode, owner, size, link target and
# content hash, sorted; the state directory is left out.
tree_digest() {
	(cd "$1" && find . -path ./.drfs -prune -o -print0 | sort -z | while IFS= read -r -d '' f; do
		if [ -L "$f" ]; then
			printf '%s l %s -> %s\n' "$f" "$(stat -c '%a %u:%g' "$f")" "$(readlink "$f")"
		elif [ -f "$f" ]; then
			printf '%s f %s %s %s\n' "$f" "$(stat -c '%a %u:%g %s %h' "$f")" \
				"$(sha256sum <"$f" | cut -c1-16)" "$(getfattr -h -d -m - --absolute-names "$f" 2>/dev/null | grep -v '^#' | tr '\n' ' ')"
		else
			printf '%s %s %s\n' "$f" "$(stat -c '%F %a %u:%g %t:%T' "$f")" \
				"$(getfattr -h -d -m - --absolute-names "$f" 2>/dev/null | grep -v '^#' | tr '\n' ' ')"
		fi
	done)
}

[ -x "$DRFS" ] || { say "no drfs binary at $DRFS; run make"; exit 1; }
[ -c /dev/fuse ] || skip "no /dev/fuse on this machine"
[ "$(id -u)" = 0 ] || skip "integration tests mount filesystems and need root"
