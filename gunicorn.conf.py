"""gunicorn settings for a Heroku-style deploy: PORT and WEB_CONCURRENCY come from the environment."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = 30  # the Hub gives up after 15 s; a stuck worker is recycled well after that
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
# No preload: each worker builds its own app and Redis pool after the fork.
preload_app = False
