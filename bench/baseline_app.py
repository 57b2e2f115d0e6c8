"""The baseline: a trivial Flask app whose one JSON endpoint does one Redis PING.

It runs under the same gunicorn settings as the provider, with the same Redis
client settings (giftcard_provider.connection.connect), so the ratio
endpoint / baseline says what the provider's own work costs on top of
"Flask + one Redis round trip + JSON".

    gunicorn -c bench/gunicorn_conf.py -w 2 -b 127.0.0.1:8001 bench.baseline_app:app
"""

from __future__ import annotations

from flask import Flask, jsonify

from giftcard_provider.config import Settings
from giftcard_provider.connection import connect


def create_app() -> Flask:
    app = Flask(__name__)
    client = connect(Settings.from_env())

    @app.get("/ping")
    def ping():
        return jsonify(status="ok", redis=client.ping())

    return app


app = create_app()
