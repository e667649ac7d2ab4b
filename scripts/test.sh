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

echo "== Fly API simulator tests"
if [ -d "$REPO_ROOT/test/flysim" ]; then
	(cd "$REPO_ROOT" && "$PYTHON" -m unittest discover -s test/flysim -p 'test_*.py' -v) >"$log_dir/flysim.log" 2>&1
	tail -5 "$log_dir/flysim.log"
	sim_total=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\}.*/\1/p' "$log_dir/flysim.log")
	sim_failures=$(sed -n 's/.*failures=\([0-9]*\).*/\1/p' "$log_dir/flysim.log")
	sim_errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' "$log_dir/flysim.log")
	sim_skipped=$(sed -n 's/.*skipped=\([0-9]*\).*/\1/p' "$log_dir/flysim.log")
	sim_bad=$(( ${sim_failures:-0} + ${sim_errors:-0} ))
	if [ -z "$sim_total" ]; then
		cat "$log_dir/flysim.log"
		sim_bad=1
	fi
	if [ "$sim_bad" -gt 0 ]; then
		grep -E "^(FAIL|ERROR):" "$log_dir/flysim.log" || true
	fi
	record "simulator (unittest)" $(( ${sim_total:-0} - sim_bad - ${sim_skipped:-0} )) "$sim_bad"
fi

echo
echo "== summary (logs in $log_dir)"
printf '%s\n' "${summary[@]}"
echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
