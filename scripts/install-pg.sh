#!/usr/bin/env bash
# Builds PostgreSQL MAJOR from Debian's source package into a cached prefix and prints its pg_config.
#   scripts/install-pg.sh 17        -> /opt/pg_fly-postgresql/17/bin/pg_config (built once, reused after)
# Debian 12 ships 15 as binaries; 17 (trixie) and 18 (sid) are taken as source packages from the same archive
# the machine's own apt sources name, through a private apt configuration that leaves the system's alone.
# Other scripts select the server with PG_CONFIG=$(scripts/install-pg.sh 17). Needs root for the packages.
set -euo pipefail

major="${1:?usage: install-pg.sh MAJOR (15, 17 or 18)}"
prefix_root="${PGFLY_PG_PREFIX:-/opt/pg_fly-postgresql}"
prefix="$prefix_root/$major"
log() { echo "install-pg: $*" >&2; }

case "$major" in
15)
	# Debian 12's own packages.
	PG_MAJOR=15 "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" >&2
	echo /usr/lib/postgresql/15/bin/pg_config
	exit 0
	;;
17) suite=trixie ;;
18) suite=sid ;;
*)
	log "PostgreSQL $major is not one pg_fly is tested on (15, 17, 18)"
	exit 2
	;;
esac

# How the server is built: a prefix built another way (or by an older version of this script) is built again.
configure_options=(--without-icu --without-readline --with-zlib --enable-cassert --enable-debug)
recipe="configure ${configure_options[*]}; contrib/file_fdw; src/test/isolation"
marker="$prefix/.pg_fly-built"
built_here() { [ -f "$marker" ] && [ "$(cat "$marker")" = "$recipe" ] && [ -x "$prefix/bin/pg_config" ]; }

if built_here; then
	echo "$prefix/bin/pg_config"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	log "PostgreSQL $major is not built yet; run as root (sudo) so that it can be"
	exit 1
fi

mkdir -p "$prefix_root"
# One build at a time per major: a second caller waits, then finds the finished prefix.
exec 9>"$prefix_root/.$major.lock"
flock 9
if built_here; then
	echo "$prefix/bin/pg_config"
	exit 0
fi
# Only a prefix this script made is ever replaced.
if [ -e "$prefix" ] && [ ! -f "$marker" ] && [ -n "$(ls -A "$prefix" 2>/dev/null)" ]; then
	log "$prefix exists and was not built by this script; move it away or set PGFLY_PG_PREFIX"
	exit 1
fi

# What a build from the upstream tarball needs (17 and later ship no generated parser files).
needed=(build-essential bison flex perl zlib1g-dev pkg-config bzip2 xz-utils curl)
missing=()
for package in "${needed[@]}"; do
	dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	# Builds of two majors at once take the system's apt one at a time.
	(
		flock 8
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	) 8>"$prefix_root/.apt.lock"
fi

# The Debian archive this machine already uses: the URI of an enabled deb entry serving its own release's main.
release="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
archive=""
# deb822 keys are case-insensitive; a stanza ends at an empty line. Only an enabled "deb" entry for this release's
# main, signed by Debian's own keyring (or the default one), with an http(s) URI.
read -r -d '' find_archive <<'AWK' || true
function check() {
	if (uri ~ /^https?:\/\// && enabled && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " rel " ") &&
	    (" " components " ") ~ / main / && (signed == "" || signed ~ /debian-archive-keyring/)) {
		print uri; found = 1; exit
	}
}
function value(v) { v = $0; sub(/^[^:]*:[ \t]*/, "", v); gsub(/\t/, " ", v); return v }
BEGIN { enabled = 1 }
/^[ \t]*$/ { check(); uri = ""; types = ""; suites = ""; components = ""; signed = ""; enabled = 1; next }
{ key = tolower($0); sub(/:.*/, "", key) }
key == "types" { types = value() }
key == "uris" { split(value(), u, " "); uri = u[1] }
key == "suites" { suites = value() }
key == "components" { components = value() }
key == "signed-by" { signed = value() }
key == "enabled" { enabled = (tolower(value()) !~ /^(no|false|off|without|disable)/) }
END { if (!found) check() }
AWK
for file in /etc/apt/sources.list.d/*.sources; do
	[ -f "$file" ] || continue
	archive="$(tr -d '\r' <"$file" | awk -v rel="$release" "$find_archive")"
	[ -n "$archive" ] && break
done
if [ -z "$archive" ]; then
	archive="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk -v rel="$release" '$1 == "deb" && $0 ~ (" " rel " ") { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }')"
fi
if [ -z "$archive" ]; then
	log "found no Debian archive for $release in the machine's apt sources"
	exit 1
fi

work="$(mktemp -d /tmp/pg_fly-install-pg.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/parts"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $archive $suite main" >"$work/apt/sources.list"
# The system's apt.conf.d stays in force (proxies, a snapshot mirror's validity settings); its sources and lists do
# not: the private ones below are the only ones this apt sees.
apt_private=(
	-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/parts"
	-o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o "APT::Sandbox::User=root"
)
log "fetching the source of postgresql-$major from $suite"
apt-get "${apt_private[@]}" update -qq >&2
tarball=""
if (cd "$work" && apt-get "${apt_private[@]}" source --download-only -qq "postgresql-$major" >"$work/source.log" 2>&1); then
	tarball="$(ls "$work"/postgresql-"$major"_*.orig.tar.* | head -1)"
else
	# A mirror's index can name a point release its pool does not hold yet. Then take an earlier upstream
	# tarball from the same pool, checked against the SHA-256 pinned here (newest first).
	grep -E '^E:' "$work/source.log" | head -3 >&2 || true
	case "$major" in
	17) pinned="17.11 dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979
17.10 078a03516dcdbdb705fecaf415ea3d13a956c589e46f09fed68a06fb00598c90" ;;
	18) pinned="18.6 555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f" ;;
	esac
	while read -r version sha256; do
		candidate="$work/postgresql-${major}_$version.orig.tar.bz2"
		if curl -fsS --connect-timeout 30 --max-time 900 -o "$candidate" "$archive/pool/main/p/postgresql-$major/$(basename "$candidate")" 2>/dev/null &&
			echo "$sha256  $candidate" | sha256sum --check --status; then
			log "the archive does not serve the version its index names; using pinned $version"
			tarball="$candidate"
			break
		fi
		rm -f "$candidate"
	done <<<"$pinned"
fi
if [ -z "$tarball" ]; then
	log "could not fetch the source of PostgreSQL $major from $archive"
	exit 1
fi
mkdir "$work/src"
tar -xf "$tarball" -C "$work/src" --strip-components=1

log "building PostgreSQL $(basename "$tarball" | sed 's/.*_\(.*\)\.orig.*/\1/') into $prefix on $(nproc) cores"
cd "$work/src"
# What the tests use: the server, psql, pg_dump, pg_regress and the isolation tester (installed under pgxs),
# and file_fdw (test_hostile_owner). No ICU or readline: the tests need neither.
# Assertions on: the version differences pg_fly handles (resource owners, latches, memory contexts) are checked.
./configure --prefix="$prefix" "${configure_options[@]}" >"$work/configure.log" 2>&1 ||
	{ tail -30 "$work/configure.log" >&2; exit 1; }
{
	make -j"$(nproc)" -s &&
		make -C contrib/file_fdw -j"$(nproc)" -s &&
		make -C src/test/isolation -j"$(nproc)" -s &&
		rm -rf "$work/stage" &&
		make -s install DESTDIR="$work/stage" &&
		make -C contrib/file_fdw -s install DESTDIR="$work/stage" &&
		make -C src/test/isolation -s install DESTDIR="$work/stage"
} >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }

# Staged beside the prefix with its marker already in place, then swapped in: an interruption leaves either no
# prefix (built again next time) or a complete one, never one this script would take for someone else's.
staged="$prefix_root/.$major.new"
rm -rf "$staged"
mv "$work/stage$prefix" "$staged"
echo "$recipe" >"$staged/.pg_fly-built"
chmod -R a+rX "$staged"
rm -rf "$prefix"
mv "$staged" "$prefix"
log "PostgreSQL $major ready in $prefix"
echo "$prefix/bin/pg_config"
