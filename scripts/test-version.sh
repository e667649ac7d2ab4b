#!/usr/bin/env bash
# The checks run on each further PostgreSQL major (scripts/test.sh runs the whole suite on 15 and this on 17 and
# 18): build pg_fly against it with -Werror, install it there, run pg_regress + isolation, and the core of the
# integration suite (provisioning with its crash tests, failures, the crash storm, upgrade).
#   scripts/test-version.sh 17     builds PostgreSQL 17 first when it is not there (scripts/install-pg.sh)
# Ends with "PostgreSQL <version>: N passed, N failed, N skipped" on a line of its own; exits non-zero on failure.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
major="${1:?usage: test-version.sh MAJOR}"
require_root "$@"

CORE_INTEGRATION=(test_provisioning.py test_failures.py test_crash_storm.py test_upgrade.py)

passed=0
failed=0
skipped=0
finish() {
	echo "PostgreSQL ${version:-$major}: ${passed} passed, ${failed} failed, ${skipped} skipped"
	[ "$failed" -eq 0 ]
	exit
}

pg_config="$("$REPO_ROOT/scripts/install-pg.sh" "$major")" || {
	echo "could not build PostgreSQL $major"
	failed=1
	finish
}
version="$("$pg_config" --version | awk '{print $2}')"
bindir="$("$pg_config" --bindir)"
log_dir="$(mktemp -d "/tmp/pg_fly-test-$major-logs.XXXXXX")"

# Its own copy of the tree: the objects of another major's build must not be mixed in.
workdir="$(postgres_workdir)"
echo "== [$major] build with -Werror and install into $("$pg_config" --pkglibdir)"
if ! (make -C "$workdir" -j"$(nproc)" PG_CONFIG="$pg_config" PGFLY_STRICT=1 &&
	make -C "$workdir" install PGFLY_STRICT=1 PG_CONFIG="$pg_config") >"$log_dir/make.log" 2>&1; then
	grep -E "error|warning:" "$log_dir/make.log" | head -40
	failed=1
	finish
fi
chown -R postgres: "$workdir"

echo "== [$major] regression and isolation tests (pg_regress, as postgres)"
(cd "$workdir" && timeout --kill-after=30 900 runuser -u postgres -- make installcheck PG_CONFIG="$pg_config") \
	>"$log_dir/installcheck.log" 2>&1
read -r regress_ok regress_bad < <(regress_counts "$log_dir/installcheck.log")
passed=$((passed + regress_ok))
failed=$((failed + regress_bad))
echo "[$major] regression + isolation: $regress_ok passed, $regress_bad failed"
if [ "$regress_bad" -gt 0 ]; then
	cat "$workdir"/regression.diffs "$workdir"/output_iso/regression.diffs 2>/dev/null | head -150
	echo "kept $workdir for inspection"
else
	rm -rf "$workdir"
fi

echo "== [$major] core integration tests: ${CORE_INTEGRATION[*]}"
for file in "${CORE_INTEGRATION[@]}"; do
	log="$log_dir/${file%.py}.log"
	# A bound per file, so that a test that hangs on one major fails that file instead of holding up the run.
	(cd "$REPO_ROOT" && PG_BIN="$bindir" PG_MAJOR="$major" timeout --kill-after=30 1200 "$PYTHON" -m unittest \
		discover -s test/integration -p "$file" -v) >"$log" 2>&1
	[ $? -eq 124 ] && echo "$file: timed out after 20 min" >>"$log"
	read -r good bad skip < <(unittest_counts "$log")
	if ! grep -q '^Ran [0-9]' "$log"; then
		tail -40 "$log"
	elif [ "$bad" -gt 0 ]; then
		sed -n '/^======/,$p' "$log" | head -120
	fi
	passed=$((passed + good))
	failed=$((failed + bad))
	skipped=$((skipped + skip))
	echo "[$major] $file: $good passed, $bad failed, $skip skipped"
done
finish
