#!/usr/bin/env bash
# The test command: installs everything on a fresh machine, then lint + tests.
# Debian packages: chromium + chromium-driver (dashboard browser tests),
# redis-server (the Redis cache backend test).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

scripts/setup.sh --test
VENV=${TRAINMAP_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

# Keep chromium's profile and caches out of the home directory.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export XDG_CONFIG_HOME="$scratch/config" XDG_CACHE_HOME="$scratch/cache"

ruff check .
ruff format --check .
python -m pytest --headless "$@"
