"""gunicorn settings for a Heroku-style deploy: PORT and WEB_CONCURRENCY come from the environment."""

import os
import tempfile

# Development listens on this machine only (it runs on the public demo credentials); production on
# every interface, where Heroku's router connects to $PORT. Whether APP_ENV is valid, config.py decides.
_development = os.environ.get("APP_ENV", "").strip().lower() == "development"
bind = f"{'127.0.0.1' if _development else '0.0.0.0'}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = 30  # the Hub gives up after 15 s; a stuck worker is recycled well after that
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app logs one JSON line per request itself (giftcard_provider/observability.py)
errorlog = "-"
# No preload: each worker builds its own app and Redis pool after the fork, so no
# socket or connection pool is ever shared between processes.
preload_app = False

# Prometheus multiprocess mode (giftcard_provider/observability.py): each worker writes its
# samples to files here and GET /metrics adds them up. Set in the master, before any worker
# imports prometheus_client; a fresh, empty directory per start, as the client requires.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gc-metrics-")


def on_starting(server):
    """Once per master start: an operator-given directory is created, and emptied of a previous run's files."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def child_exit(server, worker):
    """A worker that died no longer counts in live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
