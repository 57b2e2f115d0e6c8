"""Configuration, read from the environment in one place.

APP_ENV is `production` unless it says `development`: a deploy that forgot it
is not left open. Development must be asked for (scripts/run does), is refused
on a Heroku dyno, and gives every setting a local default, so the service runs
on a laptop with no accounts, with the public demo credentials and secret.
Production refuses those demo values, and tokens and secrets too short to be
secrets. docs/configuration.md lists every setting this module reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

DEMO_APP_KEY = "demo-app-key"
DEMO_APP_TOKEN = "demo-app-token"
DEMO_CODE_HASH_SECRET = "demo-code-hash-secret"
APP_ENVS = ("development", "production")
# Shortest secrets production accepts. app.json's "generator": "secret" makes 64 hex characters;
# `openssl rand -hex 16` makes 32.
MIN_TOKEN_LENGTH = 16  # PROVIDER_API_APP_TOKEN, the tokens of PROVIDER_API_EXTRA_CREDENTIALS, METRICS_TOKEN
MIN_CODE_HASH_SECRET_LENGTH = 32
# The ledger counts minor units in Lua numbers (doubles, exact below 2**53), and a currency may have
# 4 decimals: the money ceilings stay below 2**53 / 10**4 major units.
MAX_CEILING = Decimal(2**53) / 10**4


class ConfigError(RuntimeError):
    """The environment does not describe a service that may start."""


def _flag(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0 (true/false), not {text!r}")


def _pairs(text: str) -> list[tuple[str, str]]:
    """Parse "key1:token1,key2:token2" (extra credential pairs for rotation)."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, token = item.partition(":")
        if not sep or not key or not token:
            raise ConfigError(f"PROVIDER_API_EXTRA_CREDENTIALS: expected key:token, got {item!r}")
        pairs.append((key, token))
    return pairs


def _count(name: str, text: str) -> int:
    """A whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, not {text!r}")
    return value


def _positive(name: str, text: str, kind=float):
    """A number above 0 (an int when kind is int)."""
    value = kind(text)
    if not value > 0:
        raise ConfigError(f"{name} must be above 0, not {text!r}")
    return value


def _ceiling(name: str, text: str) -> Decimal:
    value = Decimal(text)
    if not 0 < value <= MAX_CEILING:
        raise ConfigError(f"{name} must be positive and at most {MAX_CEILING:f} (exact in the ledger), not {text}")
    return value


def _app_env(env) -> str:
    """APP_ENV, strictly: unset (or empty) is production; development is refused where clearly deployed."""
    text = env.get("APP_ENV") or ""
    value = text.strip().lower() or "production"
    if value not in APP_ENVS:
        raise ConfigError(f"APP_ENV must be development or production (unset means production), not {text!r}")
    if value == "development" and env.get("DYNO"):
        # Heroku sets DYNO in every dyno: this is a deploy, and development would run it on demo secrets.
        raise ConfigError("APP_ENV=development is refused on a Heroku dyno (DYNO is set): use APP_ENV=production")
    return value


def _check_production(main: list[tuple[str, str]], extra: list[tuple[str, str]], secret: str, metrics_token: str):
    """Production starts only with real-looking secrets: none of the demo values, none too short."""
    if not main and not extra:
        raise ConfigError(
            "APP_ENV=production needs PROVIDER_API_APP_KEY and PROVIDER_API_APP_TOKEN "
            "(an unset APP_ENV means production; APP_ENV=development runs on the demo credentials)"
        )
    for variable, pairs in (
        ("PROVIDER_API_APP_KEY / PROVIDER_API_APP_TOKEN", main),
        ("PROVIDER_API_EXTRA_CREDENTIALS", extra),
    ):
        for key, token in pairs:
            if key == DEMO_APP_KEY or token == DEMO_APP_TOKEN:
                raise ConfigError(f"APP_ENV=production refuses the demo credentials in {variable}")
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(f"APP_ENV=production needs tokens of {MIN_TOKEN_LENGTH}+ characters in {variable}")
    if not secret:
        raise ConfigError("APP_ENV=production needs CODE_HASH_SECRET")
    if secret == DEMO_CODE_HASH_SECRET or len(secret) < MIN_CODE_HASH_SECRET_LENGTH:
        raise ConfigError(
            f"APP_ENV=production needs CODE_HASH_SECRET of {MIN_CODE_HASH_SECRET_LENGTH}+ characters, not the demo one"
        )
    if metrics_token and len(metrics_token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"APP_ENV=production needs a METRICS_TOKEN of {MIN_TOKEN_LENGTH}+ characters")


@dataclass(frozen=True)
class Settings:
    # The defaults are development's (tests build Settings directly); from_env() decides the environment.
    app_env: str = "development"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False  # REDIS_URL is then one startup node of a Redis Cluster (store.py)
    redis_socket_timeout: float = 0.5
    redis_connect_timeout: float = 0.5
    redis_retries: int = 1
    redis_max_connections: int = 20
    redis_ssl_cert_reqs: str = "required"
    redis_wait_local_aof: int = 0
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    credentials: tuple[tuple[str, str], ...] = ((DEMO_APP_KEY, DEMO_APP_TOKEN),)
    provider_id: str = "giftcard-provider"
    href_prefix: str = ""
    default_currency: str = "USD"
    hold_lifetime_seconds: float = 7 * 24 * 3600
    card_validity_days: int = 5 * 365
    code_hash_secret: str = DEMO_CODE_HASH_SECRET
    max_transaction_amount: Decimal = Decimal("1000000")
    max_card_balance: Decimal = Decimal("1000000")
    max_content_length: int = 64 * 1024
    key_prefix: str = "gc"
    log_level: str = "INFO"
    # Failed redemption-code searches allowed per shopper (whole identity) / per source address, which
    # behind the Hub is the whole store ("N/minute", ";"-separated; "" turns that limit off); the most
    # subjects tracked per limit window (bounds the limiter's memory). See throttle.py.
    code_lookup_limit: str = "10/minute"
    code_lookup_address_limit: str = ""
    code_lookup_max_tracked: int = 10_000
    trusted_proxy_hops: int = 0  # proxies that append to X-Forwarded-For (Heroku's router: 1)
    # Event log retention (events.py), applied by the sweeper: events older than this many days, and
    # beyond this many per bucket (256 buckets), are trimmed; 0 keeps them (the default: the log is
    # the ledger's history, and a webhook consumer that is down must find its events when it is back).
    event_retention_days: int = 0
    event_retention_max: int = 0
    metrics_token: str = ""  # GET /metrics wants `Authorization: Bearer <it>`; production without it: no /metrics
    api_docs: bool = True  # Swagger UI at /docs (production: off unless API_DOCS=1)
    # Webhook delivery (webhooks.py, the worker process): attempts per event before it goes to the
    # endpoint's dead letters, each attempt's network timeout, and the retry backoff (exponential
    # from base, capped, with jitter). The defaults spread 12 attempts over 1.2 to 2.4 hours.
    webhook_max_attempts: int = 12
    webhook_timeout_seconds: float = 15.0
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_max_seconds: float = 3600.0

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        get = env.get
        key, token = get("PROVIDER_API_APP_KEY"), get("PROVIDER_API_APP_TOKEN")
        app_env = _app_env(env)
        if bool(key) != bool(token):
            raise ConfigError("PROVIDER_API_APP_KEY and PROVIDER_API_APP_TOKEN must be set together")
        main = [(key, token)] if key else []
        extra = _pairs(get("PROVIDER_API_EXTRA_CREDENTIALS", ""))
        pairs = main + extra
        secret = get("CODE_HASH_SECRET", "")
        metrics_token = get("METRICS_TOKEN", "")
        if app_env == "production":
            _check_production(main, extra, secret, metrics_token)
        api_docs = get("API_DOCS", "")
        cluster = _flag("REDIS_CLUSTER", get("REDIS_CLUSTER", ""))
        if cluster and (get("REDIS_WAIT_REPLICAS", "0") != "0" or get("REDIS_WAIT_LOCAL_AOF", "0") != "0"):
            # WAIT counts the writes of the connection it is sent on; on a cluster the
            # write's connection is chosen per slot, and no pipeline pins WAIT to it.
            raise ConfigError("REDIS_WAIT_REPLICAS / REDIS_WAIT_LOCAL_AOF are not supported with REDIS_CLUSTER")
        try:
            return cls(
                app_env=app_env,
                redis_url=get("REDIS_URL", cls.redis_url),
                redis_cluster=cluster,
                redis_socket_timeout=float(get("REDIS_SOCKET_TIMEOUT", cls.redis_socket_timeout)),
                redis_connect_timeout=float(get("REDIS_CONNECT_TIMEOUT", cls.redis_connect_timeout)),
                redis_retries=int(get("REDIS_RETRIES", cls.redis_retries)),
                redis_max_connections=int(get("REDIS_MAX_CONNECTIONS", cls.redis_max_connections)),
                redis_ssl_cert_reqs=get("REDIS_SSL_CERT_REQS", cls.redis_ssl_cert_reqs),
                redis_wait_local_aof=int(get("REDIS_WAIT_LOCAL_AOF", cls.redis_wait_local_aof)),
                redis_wait_replicas=int(get("REDIS_WAIT_REPLICAS", cls.redis_wait_replicas)),
                redis_wait_timeout_ms=int(get("REDIS_WAIT_TIMEOUT_MS", cls.redis_wait_timeout_ms)),
                credentials=tuple(pairs) or cls.credentials,
                provider_id=get("PROVIDER_ID", cls.provider_id),
                href_prefix=get("HREF_PREFIX", cls.href_prefix).rstrip("/"),
                default_currency=get("DEFAULT_CURRENCY", cls.default_currency).upper(),
                hold_lifetime_seconds=int(get("HOLD_LIFETIME_SECONDS", cls.hold_lifetime_seconds)),
                card_validity_days=int(get("CARD_VALIDITY_DAYS", cls.card_validity_days)),
                code_hash_secret=secret or cls.code_hash_secret,
                max_transaction_amount=_ceiling(
                    "MAX_TRANSACTION_AMOUNT", get("MAX_TRANSACTION_AMOUNT", str(cls.max_transaction_amount))
                ),
                max_card_balance=_ceiling("MAX_CARD_BALANCE", get("MAX_CARD_BALANCE", str(cls.max_card_balance))),
                max_content_length=int(get("MAX_CONTENT_LENGTH", cls.max_content_length)),
                key_prefix=get("REDIS_KEY_PREFIX", cls.key_prefix),
                log_level=get("LOG_LEVEL", cls.log_level).upper(),
                code_lookup_limit=get("CODE_LOOKUP_LIMIT", cls.code_lookup_limit),
                code_lookup_address_limit=get("CODE_LOOKUP_ADDRESS_LIMIT", cls.code_lookup_address_limit),
                code_lookup_max_tracked=int(get("CODE_LOOKUP_MAX_TRACKED", cls.code_lookup_max_tracked)),
                trusted_proxy_hops=int(get("TRUSTED_PROXY_HOPS", cls.trusted_proxy_hops)),
                event_retention_days=_count("EVENT_RETENTION_DAYS", get("EVENT_RETENTION_DAYS", "0")),
                event_retention_max=_count("EVENT_RETENTION_MAX", get("EVENT_RETENTION_MAX", "0")),
                metrics_token=metrics_token,
                # Swagger UI is for people: on by default in development only.
                api_docs=_flag("API_DOCS", api_docs) if api_docs.strip() else app_env == "development",
                webhook_max_attempts=_positive("WEBHOOK_MAX_ATTEMPTS", get("WEBHOOK_MAX_ATTEMPTS", "12"), int),
                webhook_timeout_seconds=_positive("WEBHOOK_TIMEOUT_SECONDS", get("WEBHOOK_TIMEOUT_SECONDS", "15")),
                webhook_retry_base_seconds=_positive(
                    "WEBHOOK_RETRY_BASE_SECONDS", get("WEBHOOK_RETRY_BASE_SECONDS", "5")
                ),
                webhook_retry_max_seconds=_positive(
                    "WEBHOOK_RETRY_MAX_SECONDS", get("WEBHOOK_RETRY_MAX_SECONDS", "3600")
                ),
            )
        except (ValueError, ArithmeticError) as exc:
            raise ConfigError(f"invalid setting: {exc}") from exc

    @property
    def uses_demo_credentials(self) -> bool:
        return self.credentials == ((DEMO_APP_KEY, DEMO_APP_TOKEN),)
