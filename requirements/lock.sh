#!/usr/bin/env bash
# Regenerates the two locks from the inputs in requirements/ with uv's resolver (pinned in requirements-dev.txt):
#
#   requirements.txt      the app (what `pip install -r requirements.txt` and a HuggingFace Space install):
#                         app.in + constraints.txt - excludes-app.txt, one universal lock for CPython >= 3.11.
#                         No hashes: the same `torch==2.13.0` is the CPU build from local disk here and PyPI's build
#                         on a Space, and pip's hash-checking mode cannot accept both (docs/install.md).
#   requirements-dev.txt  the tests (the README's test command, .ci/run): dev.in + constraints.txt +
#                         constraints-dev.txt - excludes-dev.txt, for CPython 3.11 on x86_64 Linux, with hashes;
#                         installed with --no-deps because lmms-eval's excluded dependencies stay declared.
#
# Run from the repository root, in the test venv:  bash requirements/lock.sh
# A version already in a lock is kept unless an input asks otherwise (uv reads the old lock as preferences); to move
# everything to the newest allowed versions, pass --upgrade.
set -euo pipefail
cd "$(dirname "$0")/.."
UV="${UV:-.venv/bin/uv}"
WHEELS="${PRUNESCOPE_WHEELS:-/opt/wheels}"
export UV_PYTHON_DOWNLOADS=never
"$UV" pip compile requirements/app.in \
    --constraints requirements/constraints.txt --excludes requirements/excludes-app.txt \
    --universal --python-version 3.11 --no-emit-find-links \
    --custom-compile-command "bash requirements/lock.sh" --quiet \
    --output-file requirements.txt "$@"
"$UV" pip compile requirements/dev.in \
    --constraints requirements/constraints.txt --constraints requirements/constraints-dev.txt \
    --excludes requirements/excludes-dev.txt --find-links "$WHEELS" \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-find-links \
    --custom-compile-command "bash requirements/lock.sh" --quiet \
    --output-file requirements-dev.txt "$@"
