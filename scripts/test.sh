#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds, installs pg_fly, then runs
#   1. the CI gates: clang-format drift (C++), pyflakes (Python),
#   2. the core's unit tests (GoogleTest, ctest), built with -Werror -Wshadow, then again under ASan + UBSan,
#   3. pg_regress and isolation tests on a throwaway PostgreSQL with pg_fly preloaded (as the postgres user),
#   4. the Fly API simulator's own tests and the integration tests.
#   5. on PostgreSQL 17 and 18 (built from Debian's source packages when missing): a -Werror build, pg_regress +
#      isolation and the integration core (scripts/test-version.sh), in the background while 1-4 run on 15.
# Ends with "N passed, N failed, N skipped" on a line of its own; exits non-zero when anything failed. With CI=true
# a test whose input is missing fails instead of skipping. PGFLY_TEST_MAJORS="" leaves out 17 and 18.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

"$REPO_ROOT/scripts/install-deps.sh" || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }

passed=0
failed=0
skipped=0
summary=()
skip_reasons=()
record() { # suite passed failed [skipped]
	passed=$((passed + $2))
	failed=$((failed + $3))
	skipped=$((skipped + ${4:-0}))
	summary+=("$(printf '%-28s %4d passed, %d failed, %d skipped' "$1" "$2" "$3" "${4:-0}")")
}
log_dir="$(mktemp -d /tmp/pg_fly-test-logs.XXXXXX)"
chmod 755 "$log_dir"

# The other majors go first, in the background: building a server takes minutes, and the tests mostly wait on the
# worker and the simulator, so they overlap well with 15's suite. One server build at a time; each major's tests
# start as soon as its server is there.
other_majors="${PGFLY_TEST_MAJORS-17 18}"
if [ -n "$other_majors" ]; then
	# Bounded in time, and killed with everything it started if this script ends first.
	(
		for major in $other_majors; do
			# test-version.sh bounds each of its steps itself (a timeout around it would leave its inner ones
			# running when it fired).
			timeout 1800 "$REPO_ROOT/scripts/install-pg.sh" "$major" >"$log_dir/install-pg-$major.log" 2>&1
			rc=$?
			if [ "$rc" -eq 0 ]; then
				"$REPO_ROOT/scripts/test-version.sh" "$major" >"$log_dir/pg$major.log" 2>&1 &
			else
				[ "$rc" -eq 124 ] && echo "install-pg: timed out after 30 min" >>"$log_dir/install-pg-$major.log"
				echo "PostgreSQL $major: 0 passed, 1 failed, 0 skipped" >"$log_dir/pg$major.log"
			fi
		done
		wait
	) &
	other_majors_pid=$!
	trap 'kill_tree "$other_majors_pid"' EXIT
	echo "== PostgreSQL ${other_majors// /, }: building and testing in the background (logs in $log_dir)"
fi

# One check that passes or fails as a whole (a gate), counted as one test; its output is shown when it fails.
run_step() { # label command...
	local label="$1" log="$log_dir/${1//[^A-Za-z0-9]/_}.log"
	shift
	echo "== $label"
	if "$@" >"$log" 2>&1; then
		record "$label" 1 0
	else
		head -100 "$log"
		record "$label" 0 1
	fi
}

# Tracked files matching the patterns, under the given folders ("." for all); a find under the fallback folders
# when there is no git checkout (a tarball, say).
source_files() { # folder... -- pattern... [-- fallback-folder...]
	local folders=() patterns=() fallback=()
	while [ "$1" != "--" ]; do folders+=("$1"); shift; done
	shift
	while [ $# -gt 0 ] && [ "$1" != "--" ]; do patterns+=("$1"); shift; done
	[ $# -gt 0 ] && shift
	fallback=("$@")
	if [ -e "$REPO_ROOT/.git" ] && git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
		local pathspecs=() folder pattern
		for folder in "${folders[@]}"; do
			for pattern in "${patterns[@]}"; do pathspecs+=("$folder/$pattern"); done
		done
		git -C "$REPO_ROOT" ls-files -- "${pathspecs[@]}"
	else
		[ ${#fallback[@]} -gt 0 ] && folders=("${fallback[@]}")
		local names=() pattern
		for pattern in "${patterns[@]}"; do names+=(-o -name "$pattern"); done
		(cd "$REPO_ROOT" && find "${folders[@]}" -type f \( "${names[@]:1}" \) | sort)
	fi
}

check_format() { # C++ formatted as .clang-format says; prints the drift
	local files
	mapfile -t files < <(source_files . -- '*.cpp' '*.hpp' '*.h' -- src include test)
	[ ${#files[@]} -gt 0 ] || { echo "no C++ files found"; return 1; }
	(cd "$REPO_ROOT" && clang-format --dry-run -Werror "${files[@]}")
}

check_python() { # pyflakes over the simulator, the tests, the benchmarks and the scripts
	local files
	mapfile -t files < <(source_files test bench scripts -- '*.py')
	[ ${#files[@]} -gt 0 ] || { echo "no Python files found"; return 1; }
	(cd "$REPO_ROOT" && pyflakes3 "${files[@]}")
}

# Configures and builds the core and its unit tests in a build folder, runs them with ctest, records the counts.
run_ctest_suite() { # label build-folder cmake-option...
	local label="$1" build="$REPO_ROOT/$2" log="$log_dir/$2.log" ctest_log="$log_dir/$2-ctest.log"
	shift 2
	echo "== $label: build ($build) and run"
	if cmake -S "$REPO_ROOT" -B "$build" "$@" >"$log" 2>&1 &&
		cmake --build "$build" -j"$(nproc)" >>"$log" 2>&1; then
		(cd "$build" && ctest --output-on-failure) >"$ctest_log" 2>&1
		tail -3 "$ctest_log"
		local total failures
		total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$ctest_log")
		failures=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$ctest_log")
		if [ -z "$total" ] || [ "${failures:-1}" -gt 0 ]; then
			grep -v -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .* Passed' "$ctest_log" | head -200
		fi
		record "$label" $((${total:-0} - ${failures:-0})) "${failures:-1}"
	else
		tail -100 "$log"
		record "$label" 0 1
	fi
}

run_step "format (clang-format)" check_format
run_step "python lint (pyflakes)" check_python
run_ctest_suite "unit (ctest)" build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGFLY_STRICT=ON -DPGFLY_SANITIZE=OFF
# Debug (-O0, asserts on): the sanitized build compiles several times faster than with -O2.
run_ctest_suite "unit (ASan+UBSan)" build-asan -DCMAKE_BUILD_TYPE=Debug -DPGFLY_STRICT=ON -DPGFLY_SANITIZE=ON

echo "== build and install the extension (PGXS, -Werror -Wshadow)"
if make -C "$REPO_ROOT" -j"$(nproc)" PGFLY_STRICT=1 PG_CONFIG="$PG_CONFIG" >"$log_dir/make.log" 2>&1 &&
	make -C "$REPO_ROOT" install PGFLY_STRICT=1 PG_CONFIG="$PG_CONFIG" >>"$log_dir/make.log" 2>&1; then
	grep -E "warning:" "$log_dir/make.log" || true
	echo "installed into $("$PG_CONFIG" --pkglibdir)"

	echo "== regression and isolation tests (pg_regress, as postgres)"
	workdir="$(postgres_workdir)"
	(cd "$workdir" && runuser -u postgres -- make installcheck PG_CONFIG="$PG_CONFIG") 2>&1 | tee "$log_dir/installcheck.log"
	read -r regress_ok regress_failed < <(regress_counts "$log_dir/installcheck.log")
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

# Runs a Python unittest suite and records its counts, and one line per reason tests were skipped for.
run_unittest_suite() { # label folder
	local label="$1" folder="$2" log="$log_dir/$(basename "$2").log"
	(cd "$REPO_ROOT" && "$PYTHON" -m unittest discover -s "$folder" -p 'test_*.py' -v) >"$log" 2>&1
	tail -4 "$log"
	local good bad skips
	read -r good bad skips < <(unittest_counts "$log")
	if ! grep -q '^Ran [0-9]' "$log"; then
		cat "$log"
	elif [ "$bad" -gt 0 ]; then
		sed -n '/^======/,$p' "$log" | head -150
	fi
	local reason # "test_x (module.Class.test_x) ... skipped 'why'" (-v), one line per distinct reason
	while IFS= read -r reason; do
		skip_reasons+=("skipped in $label, $reason")
	done < <(sed -n "s/^\(.* \.\.\. \)\{0,1\}skipped '\(.*\)'\$/\2/p" "$log" | sort | uniq -c |
		sed 's/^ *\([0-9]*\) \(.*\)/\1 test(s): \2/')
	record "$label" "$good" "$bad" "$skips"
}

echo "== Fly API simulator tests"
run_unittest_suite "simulator (unittest)" test/flysim

echo "== integration tests (PostgreSQL + worker + libcurl + simulator)"
run_unittest_suite "integration (unittest)" test/integration

pg15_line="PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'): ${passed} passed, ${failed} failed, ${skipped} skipped"
if [ -n "$other_majors" ]; then
	echo "== PostgreSQL ${other_majors// /, } (waiting for the background run)"
	wait "$other_majors_pid"
	trap - EXIT
	for major in $other_majors; do
		echo "---- PostgreSQL $major"
		cat "$log_dir/install-pg-$major.log"
		grep -vE '^== ' "$log_dir/pg$major.log" | grep -vE '^PostgreSQL [^:]+: ' || true
		line="$(grep -E '^PostgreSQL [^:]+: [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' "$log_dir/pg$major.log" | tail -1)"
		if [ -n "$line" ]; then
			read -r v_passed v_failed v_skipped < <(echo "$line" | sed 's/.*: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped/\1 \2 \3/')
			record "${line%%:*}" "$v_passed" "$v_failed" "$v_skipped"
		else
			record "PostgreSQL $major" 0 1
		fi
	done
fi

echo
echo "== summary (logs in $log_dir)"
printf '%s\n' "${summary[@]}"
echo "$pg15_line (the whole suite)"
[ ${#skip_reasons[@]} -eq 0 ] || printf '%s\n' "${skip_reasons[@]}"
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[ "$failed" -eq 0 ]
