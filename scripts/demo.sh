#!/usr/bin/env bash
# pg_fly's main job end to end: installs what is missing, builds and installs pg_fly, then runs the four
# acceptance tests of the setup pg_fly replaces (docs/architecture.md) on a throwaway PostgreSQL and the
# project's Fly API simulator (or the real Fly API when FLY_API_TOKEN and FLY_IMAGE are set).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "$@"

"$REPO_ROOT/scripts/install-deps.sh"
echo "== building and installing pg_fly"
make -C "$REPO_ROOT" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" >/dev/null
make -C "$REPO_ROOT" install PG_CONFIG="$PG_CONFIG" >/dev/null
exec "$PYTHON" "$REPO_ROOT/scripts/demo.py"
