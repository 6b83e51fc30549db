#!/bin/bash
# Runs every tests/integration/NNNN-*.sh with a time limit, prints one line
# per test and the totals.  Exit status 1 when any test failed.
cd "$(dirname "$0")" || exit 1
limit=${TEST_TIMEOUT:-600}
passed=0 failed=0 skipped=0 failed_names=""
for t in ${TESTS:-[0-9][0-9][0-9][0-9]-*.sh}; do
	start=$(date +%s)
	timeout -k 10 "$limit" bash "$t" >"/tmp/drfs-test-$t.log" 2>&1
	rc=$?
	secs=$(( $(date +%s) - start ))
	case $rc in
	0) passed=$((passed + 1)); echo "PASS $t (${secs}s)" ;;
	77) skipped=$((skipped + 1)); echo "SKIP $t: $(grep SKIP "/tmp/drfs-test-$t.log" | tail -1)" ;;
	*) failed=$((failed + 1)); failed_names="$failed_names $t"
	   [ $rc = 124 ] && echo "FAIL $t: timed out after ${limit}s" || echo "FAIL $t (exit $rc, ${secs}s)"
	   sed 's/^/    /' "/tmp/drfs-test-$t.log" | tail -40 ;;
	esac
done
echo "integration: $passed passed, $failed failed, $skipped skipped"
[ $failed = 0 ]
