# Sourced by scripts/run and scripts/test: the project virtualenv in .venv, holding exactly the
# packages of one lock file (requirements.txt for run, requirements-dev.txt for test), installed
# with pip's hash checking: the same files Heroku and CI install, and an unhashed or altered lock
# fails. Whenever the lock changes, .venv is made afresh, so a package dropped from it does not linger.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
lock=${1:-requirements.txt}

# The locks are made for Heroku's Python 3.11 (.python-version).
python=$(command -v python3.11 || command -v python3 || true)
if [ -z "$python" ] || [ "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.11 ]; then
  echo "Python 3.11 is needed (.python-version): install it as python3.11." >&2
  exit 1
fi

# One stamp per lock content; requirements-dev.txt is made from requirements.txt, so its stamp covers both.
stamp_of() { echo ".venv/.locked-$(basename "$1" .txt)-$(cat requirements.txt "$1" | sha256sum | cut -c1-16)"; }
# A .venv made from the current dev lock also serves scripts/run: that lock holds every runtime package
# at the runtime lock's version and hashes (tests/test_lockfiles.py), plus the test tools.
if [ ! -f "$(stamp_of "$lock")" ] && [ ! -f "$(stamp_of requirements-dev.txt)" ]; then
  echo "Installing $lock into a fresh .venv" >&2
  "$python" -m venv --clear .venv
  .venv/bin/pip install --quiet --require-hashes -r "$lock"
  .venv/bin/pip check
  touch "$(stamp_of "$lock")"
fi
export PATH="$PWD/.venv/bin:$PATH"
