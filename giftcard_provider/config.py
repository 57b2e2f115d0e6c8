"""Configuration, read from the environment in one place.

Every setting has a local default so `flask run` works on a laptop with no
accounts; `APP_ENV=production` turns the demo defaults for secrets into
start-up errors instead. The README's configuration table mirrors this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

DEMO_APP_KEY = "demo-app-key"
DEMO_APP_TOKEN = "demo-app-token"
DEMO_CODE_HASH_SECRET = "demo-code-hash-secret"


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


@dataclass(frozen=True)
class Settings:
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

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        get = env.get
        key, token = get("PROVIDER_API_APP_KEY"), get("PROVIDER_API_APP_TOKEN")
        app_env = get("APP_ENV", "development")
        if bool(key) != bool(token):
            raise ConfigError("PROVIDER_API_APP_KEY and PROVIDER_API_APP_TOKEN must be set together")
        pairs = [(key, token)] if key else []
        pairs += _pairs(get("PROVIDER_API_EXTRA_CREDENTIALS", ""))
        secret = get("CODE_HASH_SECRET", "")
        if app_env == "production":
            if not pairs:
                raise ConfigError("APP_ENV=production needs PROVIDER_API_APP_KEY and PROVIDER_API_APP_TOKEN")
            if not secret:
                raise ConfigError("APP_ENV=production needs CODE_HASH_SECRET")
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
                max_transaction_amount=Decimal(get("MAX_TRANSACTION_AMOUNT", cls.max_transaction_amount)),
                max_card_balance=Decimal(get("MAX_CARD_BALANCE", cls.max_card_balance)),
                max_content_length=int(get("MAX_CONTENT_LENGTH", cls.max_content_length)),
                key_prefix=get("REDIS_KEY_PREFIX", cls.key_prefix),
                log_level=get("LOG_LEVEL", cls.log_level).upper(),
                code_lookup_limit=get("CODE_LOOKUP_LIMIT", cls.code_lookup_limit),
                code_lookup_address_limit=get("CODE_LOOKUP_ADDRESS_LIMIT", cls.code_lookup_address_limit),
                code_lookup_max_tracked=int(get("CODE_LOOKUP_MAX_TRACKED", cls.code_lookup_max_tracked)),
                trusted_proxy_hops=int(get("TRUSTED_PROXY_HOPS", cls.trusted_proxy_hops)),
            )
        except (ValueError, ArithmeticError) as exc:
            raise ConfigError(f"invalid setting: {exc}") from exc

    @property
    def uses_demo_credentials(self) -> bool:
        return self.credentials == ((DEMO_APP_KEY, DEMO_APP_TOKEN),)
