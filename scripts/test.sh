#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds, installs pg_fly, then runs
#   1. the core's unit tests (GoogleTest, ctest),
#   2. pg_regress and isolation tests on a throwaway PostgreSQL with pg_fly preloaded (as the postgres user),
#   3. the Fly API simulator's own tests.
# Ends with "N passed, N failed" on a line of its own; exits non-zero when anything failed.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

"$REPO_ROOT/scripts/install-deps.sh" || { echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
summary=()
record() { # suite passed failed
	passed=$((passed + $2))
	failed=$((failed + $3))
	summary+=("$(printf '%-28s %4d passed, %d failed' "$1" "$2" "$3")")
}
log_dir="$(mktemp -d /tmp/pg_fly-test-logs.XXXXXX)"

echo "== build (cmake: core + unit tests)"
if cmake -S "$REPO_ROOT" -B "$REPO_ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$log_dir/cmake.log" 2>&1 &&
	cmake --build "$REPO_ROOT/build" -j"$(nproc)" >>"$log_dir/cmake.log" 2>&1; then
	(cd "$REPO_ROOT/build" && ctest --output-on-failure) | tee "$log_dir/ctest.log"
	unit_total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$log_dir/ctest.log")
	unit_failed=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$log_dir/ctest.log")
	record "unit (ctest)" $((${unit_total:-0} - ${unit_failed:-0})) "${unit_failed:-1}"
else
	cat "$log_dir/cmake.log"
	record "unit (ctest)" 0 1
fi

echo "== build and install the extension (PGXS)"
if make -C "$REPO_ROOT" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" >"$log_dir/make.log" 2>&1 &&
	make -C "$REPO_ROOT" install PG_CONFIG="$PG_CONFIG" >>"$log_dir/make.log" 2>&1; then
	grep -E "warning:" "$log_dir/make.log" || true
	echo "installed into $("$PG_CONFIG" --pkglibdir)"

	echo "== regression and isolation tests (pg_regress, as postgres)"
	workdir="$(postgres_workdir)"
	(cd "$workdir" && runuser -u postgres -- make installcheck PG_CONFIG="$PG_CONFIG") 2>&1 | tee "$log_dir/installcheck.log"
	regress_ok=$(grep -E '^test .* \.\.\. ok' "$log_dir/installcheck.log" | wc -l)
	regress_failed=$(grep -E '^test .* \.\.\. FAILED' "$log_dir/installcheck.log" | wc -l)
	expected_tests=$(( $(sed -n 's/^REGRESS = //p; s/^ISOLATION = //p' "$REPO_ROOT/Makefile" | wc -w) ))
	if [ $((regress_ok + regress_failed)) -lt "$expected_tests" ]; then
		# A suite that stopped early (server failed to start, say) must not look green.
		regress_failed=$((expected_tests - regress_ok))
	fi
	record "regression + isolation" "$regress_ok" "$regress_failed"
	for diffs in "$workdir/regression.diffs" "$workdir/output_iso/regression.diffs"; do
		if [ -s "$diffs" ]; then
			echo "---- $diffs (first 200 lines)"
			head -200 "$diffs"
		fi
	done
	if [ "$regress_failed" -eq 0 ]; then
		rm -rf "$workdir"
	else
		echo "kept $workdir for inspection"
	fi
else
	cat "$log_dir/make.log"
	record "regression + isolation" 0 1
fi

# Runs a Python unittest suite and records its counts (skipped tests count as neither).
run_unittest_suite() { # label folder
	local label="$1" folder="$2" log="$log_dir/$(basename "$2").log"
	(cd "$REPO_ROOT" && "$PYTHON" -m unittest discover -s "$folder" -p 'test_*.py' -v) >"$log" 2>&1
	tail -4 "$log"
	local total failures errors skipped bad
	total=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\}.*/\1/p' "$log")
	failures=$(sed -n 's/^FAILED.*failures=\([0-9]*\).*/\1/p' "$log")
	errors=$(sed -n 's/^FAILED.*errors=\([0-9]*\).*/\1/p' "$log")
	skipped=$(sed -n 's/.*skipped=\([0-9]*\).*/\1/p' "$log" | tail -1)
	bad=$(( ${failures:-0} + ${errors:-0} ))
	if [ -z "$total" ]; then
		cat "$log"
		bad=1
	elif [ "$bad" -gt 0 ]; then
		sed -n '/^======/,$p' "$log" | head -150
	fi
	record "$label" $(( ${total:-0} - bad - ${skipped:-0} )) "$bad"
}

echo "== Fly API simulator tests"
run_unittest_suite "simulator (unittest)" test/flysim

echo "== integration tests (PostgreSQL + worker + libcurl + simulator)"
run_unittest_suite "integration (unittest)" test/integration

echo
echo "== summary (logs in $log_dir)"
printf '%s\n' "${summary[@]}"
echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
