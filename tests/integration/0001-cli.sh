#!/bin/bash
# The command surface: --help, exit codes, and every bad-input path of
# init/mount/umount gives one clear line, a non-zero exit and leaves nothing
# half-made (no mount, no daemon, no record).
. "$(dirname "$0")/lib.sh"

for c in init mount umount status; do
	check_exit "drfs $c --help" 0 "$DRFS" $c --help
	check "drfs $c --help prints usage" grep -q "usage: drfs $c" "$T/last.out"
done
check_exit "drfs --help" 0 "$DRFS" --help
check_exit "no command" 2 "$DRFS"
check_exit "unknown command" 2 "$DRFS" frobnicate
check_err "unknown command message" "unknown command 'frobnicate'"

# init
check_exit "init a new directory" 0 "$DRFS" init "$T/b"
check "init writes the configuration" grep -q '^format=1$' "$T/b/.drfs/drfs.conf"
check_exit "init twice" 1 "$DRFS" init "$T/b"
check_err "init twice message" "already a drfs backing directory"
check_exit "init without argument" 2 "$DRFS" init
check_exit "init with unknown option" 2 "$DRFS" init --bogus "$T/x"
check_exit "init on a file" 1 "$DRFS" init /etc/hostname
mkdir -p "$T/data/sub" && echo keep >"$T/data/sub/file"
check_exit "init over existing data" 0 "$DRFS" init "$T/data"
check_eq "existing data untouched" keep "$(cat "$T/data/sub/file")"
check_exit "init with --state elsewhere" 0 "$DRFS" init "$T/bs" --state "$T/state"
check "state dir elsewhere is named in the configuration" grep -q "^state=$T/state$" "$T/bs/.drfs/drfs.conf"

mkdir -p "$T/m" "$T/m2"
# nothing_left MOUNTPOINT BACKING: no mount, no daemon, no record after a failure
nothing_left() {
	! mountpoint -q "$1" && [ ! -e "$2/.drfs/mount" ] && ! pgrep -f "drfs.* $2 " >/dev/null
}

# mount: bad input
check_exit "mount missing backing" 1 "$DRFS" mount "$T/nope" "$T/m"
check_err "missing backing message" "backing directory $T/nope: No such file or directory"
check_exit "mount a file as backing" 1 "$DRFS" mount /etc/hostname "$T/m"
check_err "file backing message" "is not a directory"
mkdir -p "$T/raw"
check_exit "mount an uninitialised backing" 1 "$DRFS" mount "$T/raw" "$T/m"
check_err "uninitialised message" "not a drfs backing directory.*drfs init"
check "raw dir left as it was" [ -z "$(ls -A "$T/raw")" ]
check_exit "mount on a missing mountpoint" 1 "$DRFS" mount "$T/b" "$T/nomnt"
check_err "missing mountpoint message" "mountpoint $T/nomnt: No such file"
check_exit "mount on a file" 1 "$DRFS" mount "$T/b" /etc/hostname
check_exit "mount inside the backing" 1 "$DRFS" mount "$T/data" "$T/data/sub"
check_err "inside backing message" "inside the backing directory"
check_exit "unknown option" 2 "$DRFS" mount "$T/b" "$T/m" -o frobnicate
check_err "unknown option message" "unknown mount option 'frobnicate'"
check_exit "bad max_threads" 2 "$DRFS" mount "$T/b" "$T/m" -o max_threads=0
check_exit "mount without mountpoint" 2 "$DRFS" mount "$T/b"
check_exit "mount with extra argument" 2 "$DRFS" mount "$T/b" "$T/m" extra
check "nothing left after bad input" nothing_left "$T/m" "$T/b"
rm -f "$T/b/.drfs/drfs.conf.bak"
cp "$T/b/.drfs/drfs.conf" "$T/conf.save"
echo "format=99" >"$T/b/.drfs/drfs.conf"
check_exit "mount with a newer format" 1 "$DRFS" mount "$T/b" "$T/m"
check_err "format message" "format 99"
cp "$T/conf.save" "$T/b/.drfs/drfs.conf"

# Without /dev/fuse (a private /dev in a private mount namespace).
if command -v unshare >/dev/null; then
	check_exit "mount without /dev/fuse" 1 unshare -m sh -c "mount -t tmpfs none /dev && exec $DRFS mount $T/b $T/m"
	check_err "no /dev/fuse message" "cannot open /dev/fuse"
fi
check "nothing left without /dev/fuse" nothing_left "$T/m" "$T/b"

# A good mount, then the ways a second one must fail.
check_exit "mount" 0 "$DRFS" mount "$T/b" "$T/m"
MOUNTS+=("$T/m"); PIDS+=("$(daemon_pid "$T/b")")
check "mounted" mountpoint -q "$T/m"
check "mount record names the mountpoint" grep -q "^mountpoint=$T/m$" "$T/b/.drfs/mount"
check "the source shown is the absolute backing path" grep -q "^$T/b $T/m fuse.drfs" /proc/mounts
check_exit "mount on a mounted mountpoint" 1 "$DRFS" mount "$T/data" "$T/m"
check_err "already mounted message" "already a mount point"
check_exit "second mount of the same backing" 1 "$DRFS" mount "$T/b" "$T/m2"
check_err "state in use message" "in use by another drfs \(pid [0-9]+, mounted on $T/m\)"
check "second mountpoint untouched" eval "! mountpoint -q $T/m2"

check_exit "status by mountpoint" 0 "$DRFS" status "$T/m"
check "status names the mount" grep -q "mounted: *on $T/m by pid" "$T/last.out"
check_exit "status --json" 0 "$DRFS" status "$T/b" --json
check "status json parses and says mounted" python3 -c "import json,sys; d=json.load(open('$T/last.out')); sys.exit(0 if d['mounted'] and d['mountpoint']=='$T/m' else 1)"

# A busy mount refuses to unmount and stays whole.
(cd "$T/m" && exec sleep 30) & busy=$!
sleep 0.3
check_exit "umount busy" 1 "$DRFS" umount "$T/m"
check_err "busy message" "is busy"
kill $busy; wait $busy 2>/dev/null
check "still mounted after busy umount" mountpoint -q "$T/m"
pid=$(daemon_pid "$T/b")
check_exit "umount" 0 "$DRFS" umount "$T/m"
check "daemon gone after umount" eval "! kill -0 $pid 2>/dev/null || grep -q '^State:.*Z' /proc/$pid/status"
check "mount record removed" [ ! -e "$T/b/.drfs/mount" ]
check_exit "umount of something not mounted" 1 "$DRFS" umount "$T/m"
check_err "not mounted message" "is not mounted"
check_exit "umount of a non-drfs mount" 1 "$DRFS" umount /proc
check_err "non-drfs message" "not drfs"
check_exit "status when unmounted" 0 "$DRFS" status "$T/b"
check "status says not mounted" grep -q "mounted: *no" "$T/last.out"

# The bare form mount.fuse3 uses, and -o source= naming the backing.
check_exit "bare form" 0 "$DRFS" "$T/b" "$T/m" -o allow_other
MOUNTS+=("$T/m"); PIDS+=("$(daemon_pid "$T/b")")
check "bare form mounted with allow_other" grep -q " $T/m fuse.drfs .*allow_other" /proc/mounts
check_exit "umount bare" 0 "$DRFS" umount "$T/m"
check_exit "source= option" 0 "$DRFS" mount somename "$T/m" -o source="$T/b"
MOUNTS+=("$T/m"); PIDS+=("$(daemon_pid "$T/b")")
check "fsname is the given name" grep -q "^somename $T/m fuse.drfs" /proc/mounts
check_exit "umount source=" 0 "$DRFS" umount "$T/m"

# SIGTERM to the daemon unmounts cleanly.
check_exit "mount for SIGTERM" 0 "$DRFS" mount "$T/b" "$T/m"
MOUNTS+=("$T/m"); pid=$(daemon_pid "$T/b"); PIDS+=("$pid")
kill -TERM "$pid"
for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
check "daemon exits on SIGTERM" eval "! kill -0 $pid 2>/dev/null"
check "SIGTERM unmounted" eval "! mountpoint -q $T/m"
check "SIGTERM removed the record" [ ! -e "$T/b/.drfs/mount" ]
check "SIGTERM is logged" grep -q "signal 15: unmounting $T/m" "$T/b/.drfs/drfs.log"

# Mount flags libfuse does not take are applied once mounted.
check_exit "mount with strictatime,nodiratime" 0 "$DRFS" mount "$T/b" "$T/m" -o strictatime,nodiratime
MOUNTS+=("$T/m"); PIDS+=("$(daemon_pid "$T/b")")
check "nodiratime applied" grep -q " $T/m fuse.drfs .*nodiratime" /proc/mounts
check "strictatime applied (no relatime)" eval "! grep ' $T/m ' /proc/mounts | grep -q relatime"
check_exit "umount strictatime" 0 "$DRFS" umount "$T/m"

# The state directory elsewhere.
check_exit "mount with state elsewhere" 0 "$DRFS" mount "$T/bs" "$T/m"
MOUNTS+=("$T/m"); PIDS+=("$(daemon_pid "$T/state")")
check "record in the state directory" [ -e "$T/state/mount" ]
check "log in the state directory" grep -q "mounted $T/bs on $T/m" "$T/state/drfs.log"
check_exit "umount state elsewhere" 0 "$DRFS" umount "$T/m"
finish
