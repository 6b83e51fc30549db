#!/bin/bash
# Model-based random test: fsmodel makes the same random changes in a
# directory on drfs and in a plain reference directory, and compares the
# results of every call and the two trees after every step.  The trees must
# stay equal across a clean remount and across three crashes of the daemon
# (kill -9 after everything was fsynced), so replay on mount must not damage
# them, neither the replay after a daemon crash nor the full one after a
# machine restart.  MODEL_SEED=N repeats a run; the seed is printed first.
. "$(dirname "$0")/lib.sh"
FSMODEL=$TOP/tests/helpers/fsmodel
[ -x "$FSMODEL" ] || { say "no $FSMODEL; run make"; exit 1; }
SEED=${MODEL_SEED:-$RANDOM}
say "seed $SEED (repeat with MODEL_SEED=$SEED)"

B=$(new_backing b); M=$T/m; R=$T/ref
mount_drfs "$B" "$M"
mkdir "$M/w" "$R"
# model ARGS...: fsmodel on the two trees, with its state kept between runs.
model() { "$FSMODEL" "$@" "$M/w" "$R" --state "$T/model.state"; }

# kill_daemon BACKING MOUNTPOINT: kill -9 the daemon, wait until it is gone,
# detach the dead mount.
kill_daemon() {
	local pid i
	pid=$(daemon_pid "$1")
	[ -n "$pid" ] && kill -9 "$pid" || return 1
	for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
	! kill -0 "$pid" 2>/dev/null && umount -l "$2"
}

require "3000 random steps (seed $SEED)" model 3000 "$SEED"

umount_drfs "$M"
mount_drfs "$B" "$M"
require "trees equal after a clean remount" model compare
require "2000 random steps after the remount (seed $((SEED + 1)))" model 2000 $((SEED + 1))

# Crashes 2 and 3 replay as after a machine restart (DRFS_REPLAY_FULL): the
# namespace records too, on a tree that already has them all.
for i in 1 2 3; do
	require "crash $i: fsync every file and directory" "$FSMODEL" sync "$M/w"
	require "crash $i: kill -9 the daemon" kill_daemon "$B" "$M"
	if [ "$i" = 1 ]; then mount_drfs "$B" "$M"; else DRFS_REPLAY_FULL=1 mount_drfs "$B" "$M"; fi
	require "crash $i: trees equal after the restart" model compare
	require "crash $i: 2000 random steps (seed $((SEED + 1 + i)))" model 2000 $((SEED + 1 + i))
	require "crash $i: trees equal at the end" model compare
done
umount_drfs "$M"
finish
