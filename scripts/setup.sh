#!/usr/bin/env bash
# Create .venv and install trainmap with everything it needs (idempotent).
# Usage: scripts/setup.sh [--test]   (--test also installs the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${TRAINMAP_VENV:-.venv}
EXTRAS=""
[ "${1:-}" = "--test" ] && EXTRAS="[test]"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
stamp="$VENV/.trainmap-installed$EXTRAS"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install --quiet "torch==${TRAINMAP_TORCH_VERSION:-2.13.0}"
    "$VENV/bin/python" -m pip install --quiet -e ".$EXTRAS"
    echo "$want" > "$stamp"
fi
