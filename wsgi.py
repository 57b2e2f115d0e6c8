"""WSGI entry point: `gunicorn wsgi:app`."""

from giftcard_provider import create_app

app = create_app()
