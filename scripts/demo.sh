#!/usr/bin/env bash
# The main job: install, train the quick preset, fit the HMM, serve the dashboard.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${TRAINMAP_VENV:-.venv}/bin/trainmap" demo "$@"
