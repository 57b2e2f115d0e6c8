"""giftcard-provider: a VTEX Gift Card Provider Protocol service on a Redis ledger."""

from __future__ import annotations

import contextlib
import inspect
import logging
import re

import redis
from flask import Flask

from . import observability
from .api import Api, error_response
from .auth import check_credentials
from .config import Settings
from .errors import ProviderError
from .jsonio import DecimalJSONProvider
from .links import Links
from .store import LedgerStore
from .throttle import CodeLookupThrottle

log = logging.getLogger(__name__)
_SLASHES = re.compile(r"/{2,}")


def _collapse_slashes(wsgi_app):
    """Route "//giftcards/..." like "/giftcards/...": the Hub has been seen to double them."""

    def middleware(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if "//" in path:
            environ["PATH_INFO"] = _SLASHES.sub("/", path)
        return wsgi_app(environ, start_response)

    return middleware


class ProviderApp(Flask):
    """Flask, with one per-request cost taken out: Flask asks ``ensure_sync`` about every hook and view
    on every request, and answering took an ``inspect`` walk each time (about 4% of a Debit's CPU).
    Whether a function is a coroutine function never changes, so the answer is kept per function
    (bound methods by their underlying function, so the table stays as small as the app's code)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._is_coroutine: dict = {}

    def ensure_sync(self, func):
        key = getattr(func, "__func__", func)
        try:
            is_coroutine = self._is_coroutine[key]
        except (KeyError, TypeError):  # TypeError: an unhashable callable, asked about every time
            is_coroutine = inspect.iscoroutinefunction(func)
            with contextlib.suppress(TypeError):
                self._is_coroutine[key] = is_coroutine
        return self.async_to_sync(func) if is_coroutine else func


def create_app(settings: Settings | None = None, redis_client: redis.Redis | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = ProviderApp(__name__)
    app.json = DecimalJSONProvider(app)
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        API_TITLE="Gift Card Provider",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",  # always served; Swagger UI (/docs) is blueprints/docs.py
    )
    # JSON logs from here on; its request hooks run before the credentials check.
    observability.init_app(app, settings)
    store = LedgerStore(redis_client, settings)  # None: connects from settings on first use
    app.extensions["giftcard_provider"] = {
        "store": store,
        "links": Links(settings.href_prefix),
        "throttle": CodeLookupThrottle(store, settings),
    }

    app.before_request(check_credentials)
    app.register_error_handler(ProviderError, error_response)

    api = Api(app, spec_kwargs={"servers": [{"url": "/"}]})
    for name, header in (("appKey", "X-PROVIDER-API-AppKey"), ("appToken", "X-PROVIDER-API-AppToken")):
        api.spec.components.security_scheme(name, {"type": "apiKey", "in": "header", "name": header})
    api.spec.options["security"] = [{"appKey": [], "appToken": []}]

    # Imported here: they import schemas/, which imports giftcard_provider.money.
    from .blueprints import giftcards, operations, probes, transactions
    from .cli import cards

    for blp in (giftcards.blp, transactions.blp, operations.settlements, operations.cancellations):
        api.register_blueprint(blp)
    app.register_blueprint(probes.blp)
    if settings.api_docs:
        from .blueprints import docs  # imports swagger-ui-bundle only where /docs is served

        app.register_blueprint(docs.blp)
    app.cli.add_command(cards)

    app.wsgi_app = _collapse_slashes(app.wsgi_app)
    if settings.uses_demo_credentials:
        log.warning(
            "using demo credentials: X-PROVIDER-API-AppKey=%s X-PROVIDER-API-AppToken=%s "
            "(set PROVIDER_API_APP_KEY / PROVIDER_API_APP_TOKEN for anything real)",
            *settings.credentials[0],
        )
    return app
