#!/usr/bin/env bash
# Installs, from Debian's packages, whatever pg_fly's build, tests and demo need and the machine lacks.
# Idempotent and quiet when everything is there. Needs root (apt-get).
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
packages=(
	make g++ cmake pkg-config
	"postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" "postgresql-client-${PG_MAJOR}"
	libcurl4-openssl-dev libjansson-dev libssl-dev libgtest-dev
	python3 curl
	clang-format python3-pyflakes
)

missing=()
for package in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$package")
	fi
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "pg_fly: missing packages: ${missing[*]}; run as root (sudo) so they can be installed" >&2
	exit 1
fi
echo "pg_fly: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
