#!/usr/bin/env bash
# Every benchmark with modest defaults (about 10-11 minutes on 2 cores), then a summary.
# Flags pass through to bench/run_all.py (see --help), e.g. bench/run_all.sh --cards 1000000 --seconds 15
# Uses $PYTHON if set, else the project's .venv (scripts/_venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  echo "wrk (the HTTP load generator) is not installed. On Debian/Ubuntu: sudo apt-get install -y wrk" >&2
  exit 1
fi
if ! command -v redis-server >/dev/null; then
  echo "redis-server is not installed. On Debian/Ubuntu: sudo apt-get install -y redis-server" >&2
  exit 1
fi
if [ -z "${PYTHON:-}" ]; then
  source scripts/_venv.sh requirements.txt
  PYTHON=python
fi
exec "$PYTHON" -m bench.run_all "$@"
