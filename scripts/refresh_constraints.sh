#!/usr/bin/env bash
# Refreshes constraints.txt, the lock file that README command 2 and .ci/run
# install against: installs the newest versions pyproject.toml allows into a
# fresh venv, runs the test suite on them, and writes their exact versions only
# when it passes. Run it from anywhere; it takes a few minutes.
#
#   scripts/refresh_constraints.sh           refresh, tests first
#   scripts/refresh_constraints.sh --no-test refresh without running the tests
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q -e ".[dev]"
if [ "${1:-}" != "--no-test" ]; then
    PYTHONASYNCIODEBUG=1 "$py" -m pytest -q -p no:cacheprovider
fi
{
    echo "# Versions the test suite is known to pass with (Python $("$py" -c 'import platform; print(platform.python_version())'))."
    echo "# Used as: python -m pip install -c constraints.txt -e \".[dev]\"  (README command 2, .ci/run)."
    echo "# Refresh with scripts/refresh_constraints.sh; .ci/run --newest tests without it."
    "$py" -m pip freeze --exclude-editable | grep -viE '^(vantum-pipeline|pip|setuptools|wheel)=='
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages"
