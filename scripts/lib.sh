# Shared by scripts/test.sh and scripts/demo.sh: where things are, and a copy of the tree the postgres user
# can use (the checkout may sit where that user cannot enter, such as root's home).

PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config}"
[ -x "$PG_CONFIG" ] || PG_CONFIG="$(command -v pg_config || true)"
PG_BINDIR="$("$PG_CONFIG" --bindir 2>/dev/null || echo "/usr/lib/postgresql/${PG_MAJOR}/bin")"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

require_root() {
	if [ "$(id -u)" -ne 0 ]; then
		exec sudo --preserve-env=PG_MAJOR,PG_CONFIG,CI,FLY_API_TOKEN,FLY_IMAGE,FLY_ORG_SLUG,FLY_API_URL,FLY_REGION "$0" "$@"
	fi
}

# pg_regress's counts in its log, as "passed failed". It prints "test x ... ok" up to 15 and TAP ("ok 1 - x") from
# 16; a suite that stopped early (a server that did not start, say) counts its missing tests as failed.
regress_counts() { # log
	local ok bad expected
	ok=$(grep -cE '^(test .* \.\.\. ok|ok [0-9]+ )' "$1")
	bad=$(grep -cE '^(test .* \.\.\. FAILED|not ok [0-9]+ )' "$1")
	expected=$(sed -n 's/^REGRESS = //p; s/^ISOLATION = //p' "$REPO_ROOT/Makefile" | wc -w)
	[ $((ok + bad)) -lt "$expected" ] && bad=$((expected - ok))
	echo "$ok $bad"
}

# A Python unittest run's counts in its log, as "passed failed skipped"; a run that did not finish is one failure.
unittest_counts() { # log
	local total bad skipped
	total=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\}.*/\1/p' "$1")
	bad=$(($(sed -n 's/^FAILED.*failures=\([0-9]*\).*/\1/p' "$1" | head -1) + 0))
	bad=$((bad + $(sed -n 's/^FAILED.*errors=\([0-9]*\).*/\1/p' "$1" | head -1) + 0))
	skipped=$(($(sed -n 's/.*skipped=\([0-9]*\).*/\1/p' "$1" | tail -1) + 0))
	if [ -z "$total" ]; then
		echo "0 1 0"
	else
		echo "$((total - bad - skipped)) $bad $skipped"
	fi
}

# Sends SIGTERM to a process and all its descendants, the deepest first.
kill_tree() { # pid
	local child
	for child in $(pgrep -P "$1" 2>/dev/null); do
		kill_tree "$child"
	done
	kill -TERM "$1" 2>/dev/null || true
}

# Copies the sources the tests need into a fresh folder owned by postgres; prints its path.
postgres_workdir() {
	local dir
	dir="$(mktemp -d /tmp/pg_fly.XXXXXX)"
	(cd "$REPO_ROOT" && tar cf - --exclude=.git --exclude=build --exclude='build-*' --exclude='*.o' --exclude='*.so' --exclude='*.d' . ) | (cd "$dir" && tar xf -)
	chown -R postgres: "$dir"
	chmod 755 "$dir"
	echo "$dir"
}
