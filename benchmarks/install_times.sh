#!/usr/bin/env bash
# Times the README's two install commands as a fresh machine runs them: each in a new venv under a temporary
# directory, with an empty pip cache (so every package is fetched from the registry or the local wheel directory,
# as on a new machine), then checks each venv against its lock. Prints one line per command with its wall seconds.
#   bash benchmarks/install_times.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_CACHE_DIR="$work/pip-cache" PIP_DISABLE_PIP_VERSION_CHECK=1
t0=$(date +%s.%N)
python3 -m venv "$work/app" && "$work/app/bin/pip" install --quiet -r requirements.txt 2>/dev/null
t1=$(date +%s.%N)
"$work/app/bin/python" requirements/check.py requirements.txt
rm -rf "$PIP_CACHE_DIR"
t2=$(date +%s.%N)
python3 -m venv "$work/dev" && "$work/dev/bin/pip" install --quiet --no-deps -r requirements-dev.txt 2>/dev/null \
    && "$work/dev/bin/pip" install --quiet --no-deps --no-build-isolation -e . 2>/dev/null
t3=$(date +%s.%N)
"$work/dev/bin/python" requirements/check.py requirements-dev.txt --excludes requirements/excludes-dev.txt
python3 - "$t0" "$t1" "$t2" "$t3" "$(du -sm "$work/app" | cut -f1)" "$(du -sm "$work/dev" | cut -f1)" <<'PY'
import sys
t0, t1, t2, t3, app_mb, dev_mb = map(float, sys.argv[1:])
print(f"app install (venv + pip install -r requirements.txt): {t1 - t0:.0f} s, venv {app_mb:.0f} MB")
print(f"test install (venv + pip install --no-deps -r requirements-dev.txt + -e .): {t3 - t2:.0f} s, venv {dev_mb:.0f} MB")
PY
