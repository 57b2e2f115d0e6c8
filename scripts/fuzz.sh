#!/usr/bin/env bash
# The long fuzz: schemathesis's CLI runs VTEX's protocol spec (reference/) against a live
# server (gunicorn, as deployed) on a private redis-server, both started here on free ports
# and stopped on exit, whatever happens. Three runs, then the ledger check:
#   1. valid credentials: no 5xx, every 200 conforms to the spec, errors are JSON {code, message},
#      auth enforced (ignored_auth), unknown methods answer 405;
#   2. no credentials or generated ones, 3. the right key with a wrong token: 401 when a header is
#      missing or empty, else 403, always with an empty body, never a 2xx;
#   4. `flask cards verify`: every card's balance still follows from its journal; and the server
#      must not have logged an error.
# Requests name a seeded card and its transactions (tests/test_fuzz.py: register_cli_hooks).
#
# Usage: scripts/fuzz.sh [more `schemathesis run` options, e.g. --seed 42 or --max-time 600]
# Budget: FUZZ_MAX_EXAMPLES (default 300) per operation for run 1, a third of it for runs 2 and 3;
# FUZZ_WORKERS (default 2) schemathesis workers and gunicorn workers.
# Uses the active virtualenv, else the project's .venv (like scripts/test).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  source scripts/_venv.sh requirements-dev.txt
fi
if ! command -v redis-server >/dev/null; then
  echo "redis-server is not installed (Debian/Ubuntu: sudo apt-get install redis-server)." >&2
  exit 1
fi

max_examples=${FUZZ_MAX_EXAMPLES:-300}
workers=${FUZZ_WORKERS:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/gc-fuzz-XXXXXX")
redis_pid=""
web_pid=""
fuzz_pid=""

stop() {
  if [[ -n "$fuzz_pid" ]] && kill -0 "$fuzz_pid" 2>/dev/null; then
    kill -TERM "$fuzz_pid" && wait "$fuzz_pid" 2>/dev/null || true
  fi
  if [[ -n "$web_pid" ]] && kill -0 "$web_pid" 2>/dev/null; then
    kill -TERM "$web_pid" && wait "$web_pid" 2>/dev/null || true
  fi
  if [[ -n "$redis_pid" ]] && kill -0 "$redis_pid" 2>/dev/null; then
    kill -TERM "$redis_pid" && wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM

free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for DESCRIPTION PID PYTHON-CONDITION
  for _ in $(seq 100); do
    python -c "$3" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "$1 did not come up; its log:" >&2
  cat "$work"/*.log >&2 || true
  exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --save "" --appendonly no \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
export REDIS_URL="redis://127.0.0.1:$redis_port/0"
wait_for "redis-server" "$redis_pid" "import os, redis; redis.Redis.from_url(os.environ['REDIS_URL']).ping()"

web_port=$(free_port)
base_url="http://127.0.0.1:$web_port"
export APP_ENV=development PROVIDER_API_APP_KEY=fuzz-app-key PROVIDER_API_APP_TOKEN=fuzz-app-token CODE_HASH_SECRET=fuzz-secret
export PROMETHEUS_MULTIPROC_DIR="$work/metrics" WEB_CONCURRENCY="$workers" LOG_LEVEL=WARNING
gunicorn -c gunicorn.conf.py --bind "127.0.0.1:$web_port" wsgi:app >"$work/web.log" 2>&1 &
web_pid=$!
wait_for "gunicorn" "$web_pid" "import urllib.request; urllib.request.urlopen('$base_url/ready', timeout=1)"

cat >"$work/hooks.py" <<EOF
import os

os.environ.pop("SCHEMATHESIS_HOOKS")  # loaded now; importing the test module must not load it again

from tests.test_fuzz import register_cli_hooks

seed = register_cli_hooks("$base_url", "$PROVIDER_API_APP_KEY", "$PROVIDER_API_APP_TOKEN")
print(f"fuzz: seeded card {seed.card_id} with transactions {', '.join(seed.tx_ids)}")
EOF
export SCHEMATHESIS_HOOKS="$work/hooks.py" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

spec="$PWD/reference/giftcard-provider-protocol.openapi.json"
common=(--url "$base_url" --workers "$workers" --mode all --request-timeout 15)
refused_examples=$(( (max_examples + 2) / 3 ))  # credentials are checked first: fewer cases say as much
status=0

fuzz() {
  # From the scratch directory, so schemathesis's cache (.schemathesis/) goes away with it; in the
  # background, so that a TERM or INT is acted on at once (bash runs traps only between commands).
  (cd "$work" && exec schemathesis run "$spec" "${common[@]}" "$@") &
  fuzz_pid=$!
  wait "$fuzz_pid"
}

echo "== 1/4 valid credentials: $spec against $base_url"
fuzz -H "X-PROVIDER-API-AppKey: $PROVIDER_API_APP_KEY" -H "X-PROVIDER-API-AppToken: $PROVIDER_API_APP_TOKEN" \
  --max-examples "$max_examples" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance,response_headers_conformance,ignored_auth,unsupported_method,error_shape \
  "$@" || status=1

echo "== 2/4 no credentials, or generated ones"
fuzz --max-examples "$refused_examples" --phases examples,coverage,fuzzing \
  --checks not_a_server_error,credentials_refused "$@" || status=1

echo "== 3/4 the right key with a wrong token"
fuzz -H "X-PROVIDER-API-AppKey: $PROVIDER_API_APP_KEY" -H "X-PROVIDER-API-AppToken: not-$PROVIDER_API_APP_TOKEN" \
  --max-examples "$refused_examples" --phases examples,fuzzing --checks not_a_server_error,credentials_refused \
  "$@" || status=1

echo "== 4/4 ledger verification"
flask --app wsgi cards verify || status=1

if grep -q '"level": *"ERROR"\|Traceback' "$work/web.log"; then
  echo "the server logged errors:" >&2
  grep -A20 '"level": *"ERROR"\|Traceback' "$work/web.log" >&2 | head -100
  status=1
fi
if [[ $status -eq 0 ]]; then echo "fuzz: all passed"; else echo "fuzz: FAILED" >&2; fi
exit $status
