#!/bin/bash
# Crash consistency: tests/helpers/crashload changes files on drfs at random,
# with an fsync every 1 to 20 operations, and keeps a ledger (outside the
# mount) of what each acknowledged fsync made durable.  CRASH_POINTS times
# (default 50) the daemon is killed with SIGKILL at a random moment, the dead
# mount is detached and drfs mounted again, and everything the ledgers claim
# must be there byte for byte, with nothing durably removed come back.  Each
# crash starts a new round directory; earlier rounds are checked again every
# 10 crashes and at the end, then all but the last CRASH_KEEP are deleted.
. "$(dirname "$0")/lib.sh"
CL=$TOP/tests/helpers/crashload
[ -x "$CL" ] || { say "no $CL; run make"; exit 1; }
POINTS=${CRASH_POINTS:-50}
KEEP=${CRASH_KEEP:-25}
SEED=${CRASH_SEED:-$((RANDOM * 32768 + RANDOM))}
B=$(new_backing b); M=$T/m; L=$T/ledgers
# The journal starts past 2^32: 64-bit LSNs everywhere, from the first record.
export DRFS_JOURNAL_FIRST_LSN=0x7fffff0000
mkdir -p "$L"
mount_drfs "$B" "$M"
say "$POINTS crash points, seed $SEED (round N runs with seed $SEED+N)"
started=$SECONDS
claims=0 commits=0 files=0 absent=0 skipped=0 verifies=0 oldest=1

check "verify reports damage (crashload selftest)" \
	eval "'$CL' selftest '$M/selftest' '$L/selftest' >'$T/selftest.out' 2>&1 || { cat '$T/selftest.out'; false; }"

# forget_pids PID...: drops PIDs that are gone from the cleanup list.
forget_pids() {
	local p q keep=()
	for p in "${PIDS[@]}"; do
		for q; do [ "$p" = "$q" ] && continue 2; done
		keep+=("$p")
	done
	PIDS=("${keep[@]}")
}

# alive PID: the process exists and is not a zombie.
alive() {
	local state
	state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)
	[ -n "$state" ] && [ "$state" != Z ]
}

# A random delay from 0.05 to 0.5 seconds.
delay() {
	local ms=$((50 + RANDOM % 451))
	printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}

# verify_round N WHEN: crashload verify on round N; adds up what it checked.
verify_round() {
	local out rc summary
	out=$("$CL" verify "$M/round-$1" "$L/round-$1" 2>&1); rc=$?
	verifies=$((verifies + 1))
	# "verified F files, X absent names, S touched... (D directories, C commits, P problems)"
	summary=$(grep '^crashload: verified ' <<<"$out" | tr -c '0-9\n' ' ')
	if [ -n "$summary" ]; then
		set -- "$@" $summary
		files=$((files + $3)) absent=$((absent + $4)) skipped=$((skipped + $5))
		claims=$((claims + $3 + $4))
		[ "$2" = "after its crash" ] && commits=$((commits + $7))
	fi
	[ "$rc" = 0 ] && return 0
	say "round $1 (seed $((SEED + $1))) $2:"
	head -20 <<<"$out" | sed 's/^/    /'
	return 1
}

# remount N: the mount after crash N; a failure ends the test with drfs's message.
# Every other crash is replayed as after a machine restart (DRFS_REPLAY_FULL).
remount() {
	local full=
	[ $(($1 % 2)) = 0 ] && full=1
	if ! DRFS_REPLAY_FULL=$full "$DRFS" mount "$B" "$M" 2>"$T/mount.err"; then
		fail "drfs mount after crash $1: $(cat "$T/mount.err")"
		tail -5 "$B/.drfs/drfs.log" 2>/dev/null | sed 's/^/    drfs.log: /'
		finish
	fi
	PIDS+=("$(daemon_pid "$B")")
}

# crash N: round N runs until the daemon is killed; then detach and mount again.
crash() {
	local r=round-$1 wl dp rc i
	"$CL" run "$M/$r" "$L/$r" $((SEED + $1)) >"$L/$r.out" 2>&1 &
	wl=$!
	PIDS+=("$wl")
	for i in $(seq 200); do [ -e "$L/$r" ] && break; sleep 0.01; done
	sleep "$(delay)"
	dp=$(daemon_pid "$B")
	check "crash $1: the daemon is still running before it is killed" alive "$dp"
	check "crash $1: the workload is still running ($(head -c 300 "$L/$r.out"))" alive "$wl"
	kill -9 "$dp"
	kill -9 "$wl" 2>/dev/null
	{ wait "$wl"; } 2>/dev/null; rc=$?
	# 137: killed; 3: stopped by the dead mount.  Anything else is a bug it found.
	check "crash $1: the workload ended by SIGKILL or the dead mount, not exit $rc ($(head -c 300 "$L/$r.out"))" \
		[ "$rc" = 137 -o "$rc" = 3 ]
	for i in $(seq 500); do alive "$dp" || break; sleep 0.01; done
	check "crash $1: the killed daemon is gone" eval "! alive $dp"
	forget_pids "$wl" "$dp"
	umount -l "$M" || fusermount3 -uz "$M"
	remount "$1"
}

# check_all N: after crash N, every round kept so far; then the oldest beyond CRASH_KEEP go.
check_all() {
	local n when
	for n in $(seq "$oldest" "$1"); do
		when="after crash $1"
		[ "$n" = "$1" ] && when="after its crash"
		check "round $n verifies $when" verify_round "$n" "$when"
	done
	while [ $(($1 - oldest + 1)) -gt "$KEEP" ]; do
		check "round $oldest deleted" rm -rf "$M/round-$oldest"
		rm -rf "$L/round-$oldest" "$L/round-$oldest.d" "$L/round-$oldest.out"
		oldest=$((oldest + 1))
	done
}

for n in $(seq 1 "$POINTS"); do
	crash "$n"
	if [ $((n % 10)) = 0 ] || [ "$n" = "$POINTS" ]; then
		check_all "$n"
	else
		check "round $n verifies after its crash" verify_round "$n" "after its crash"
	fi
	[ "$FAILS" -eq 0 ] || { say "stopping at crash $n"; break; }
done
say "$n kill points exercised in $((SECONDS - started))s, $commits commits made before them;" \
	"$claims claims verified ($files files byte for byte, $absent names absent) in $verifies checks of a round;" \
	"$skipped names changed after their last commit were accepted either way"
finish
