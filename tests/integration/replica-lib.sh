# Sourced by the replication tests after lib.sh: reading the replica's
# figures from 'drfs status --json' and waiting on them.

# durable MOUNT: every change made so far is in the durable journal.  sync -f
# writes the dirty pages back, but FUSE sends no syncfs: namespace records
# would reach the disk only within the flush interval; an fsync of the root
# directory waits for the whole journal.
durable() {
	sync -f "$1" &&
		python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY|os.O_DIRECTORY); os.fsync(fd)' "$1"
}
# status_field BACKING SECTION KEY: a field of 'drfs status --json' .SECTION
status_field() {
	"$DRFS" status "$1" --json 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1],{}).get(sys.argv[2],""))' "$2" "$3"
}
# rstat BACKING KEY: a field of .replica
rstat() { status_field "$1" replica "$2"; }
# fresh BACKING T0 PYEXPR: whether the replica status, read after the
# daemon looked at the journal later than T0, satisfies PYEXPR (over r)
fresh() {
	"$DRFS" status "$1" --json 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin).get("replica", {})
sys.exit(0 if r and r["durable_at"] > float(sys.argv[1]) and eval(sys.argv[2]) else 1)' "$2" "$3"
}
# caught_up BACKING: waits (CAUGHT_UP_TRIES x 0.2 s, default 60 s) until the
# replica holds everything durable when it was called (the journal and every
# repository object)
caught_up() {
	local t0
	t0=$(date +%s.%N)
	for _ in $(seq 1 "${CAUGHT_UP_TRIES:-300}"); do
		fresh "$1" "$t0" 'r["lag_bytes"] == 0 and r["queue_objects"] == 0 and r["ok"]' && return 0
		sleep 0.2
	done
	return 1
}
# wait_failing BACKING: waits (up to 20 s) until status shows the replica failing
wait_failing() {
	for _ in $(seq 1 100); do [ "$(rstat "$1" ok)" = False ] && return 0; sleep 0.2; done
	return 1
}
latest_id() {
	"$DRFS" snapshots "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])'
}
