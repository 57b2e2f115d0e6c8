"""Settings from the environment: production unless development is asked for; production refuses
demo and short secrets; rotation pairs parse strictly."""

import pytest

from giftcard_provider import create_app
from giftcard_provider.config import DEMO_APP_KEY, DEMO_APP_TOKEN, DEMO_CODE_HASH_SECRET, ConfigError, Settings

from .conftest import make_settings

TOKEN, SECRET = "t1".ljust(16, "x"), "s".ljust(32, "x")  # the shortest production accepts
REAL = {"PROVIDER_API_APP_KEY": "k1", "PROVIDER_API_APP_TOKEN": TOKEN, "CODE_HASH_SECRET": SECRET}
DEV = {"APP_ENV": "development"}


@pytest.mark.parametrize("missing", ["PROVIDER_API_APP_KEY", "CODE_HASH_SECRET"])
def test_production_refuses_to_start_without_real_secrets(missing):
    env = {"APP_ENV": "production", **REAL}
    del env[missing]
    if missing == "PROVIDER_API_APP_KEY":
        del env["PROVIDER_API_APP_TOKEN"]
    with pytest.raises(ConfigError, match=missing):
        Settings.from_env(env)


def test_production_with_real_secrets_uses_them_and_never_the_demo_pair():
    settings = Settings.from_env({"APP_ENV": "production", **REAL})
    assert settings.credentials == (("k1", TOKEN),)
    assert not settings.uses_demo_credentials
    assert DEMO_APP_KEY not in dict(settings.credentials)


@pytest.mark.parametrize("app_env", [None, "", "production", " Production "])
def test_unset_app_env_is_production(app_env):
    env = {} if app_env is None else {"APP_ENV": app_env}
    with pytest.raises(ConfigError, match="APP_ENV=production needs PROVIDER_API_APP_KEY"):
        Settings.from_env(env)  # no demo credentials, no open service
    settings = Settings.from_env({**env, **REAL})
    assert settings.production and not settings.api_docs and not settings.metrics_token


@pytest.mark.parametrize("app_env", ["prod", "dev", "staging", "Production1"])
def test_other_app_env_values_are_refused_naming_the_allowed_ones(app_env):
    with pytest.raises(ConfigError, match="APP_ENV must be development or production"):
        Settings.from_env({"APP_ENV": app_env, **REAL})


def test_development_is_refused_on_a_heroku_dyno():
    with pytest.raises(ConfigError, match="DYNO"):
        Settings.from_env({**DEV, "DYNO": "web.1"})
    assert Settings.from_env({"APP_ENV": "production", "DYNO": "web.1", **REAL}).production


@pytest.mark.parametrize(
    "override, named",
    [
        ({"PROVIDER_API_APP_KEY": DEMO_APP_KEY}, "demo credentials in PROVIDER_API_APP_KEY"),
        ({"PROVIDER_API_APP_TOKEN": DEMO_APP_TOKEN}, "demo credentials in PROVIDER_API_APP_KEY"),
        ({"PROVIDER_API_APP_TOKEN": "t" * 15}, "16\\+ characters in PROVIDER_API_APP_KEY"),
        ({"PROVIDER_API_EXTRA_CREDENTIALS": f"{DEMO_APP_KEY}:{TOKEN}"}, "demo credentials in PROVIDER_API_EXTRA"),
        ({"PROVIDER_API_EXTRA_CREDENTIALS": f"k2:{DEMO_APP_TOKEN}"}, "demo credentials in PROVIDER_API_EXTRA"),
        ({"PROVIDER_API_EXTRA_CREDENTIALS": f"k2:{TOKEN},k3:short"}, "characters in PROVIDER_API_EXTRA"),
        ({"CODE_HASH_SECRET": DEMO_CODE_HASH_SECRET}, "CODE_HASH_SECRET of 32\\+ characters"),
        ({"CODE_HASH_SECRET": "s" * 31}, "CODE_HASH_SECRET of 32\\+ characters"),
        ({"METRICS_TOKEN": "m" * 15}, "METRICS_TOKEN of 16\\+ characters"),
    ],
)
def test_production_refuses_demo_values_and_short_secrets(override, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env({"APP_ENV": "production", **REAL, **override})
    assert Settings.from_env({**DEV, **REAL, **override})  # development takes them


def test_development_must_be_asked_for_and_defaults_to_the_demo_pair():
    settings = Settings.from_env(DEV)
    assert settings.uses_demo_credentials and settings.code_hash_secret == DEMO_CODE_HASH_SECRET
    assert settings.api_docs and not settings.metrics_token


@pytest.mark.parametrize("app_env, value, expected", [("development", "0", False), ("production", "1", True)])
def test_api_docs_default_follows_app_env_and_can_be_set(app_env, value, expected):
    assert Settings.from_env({"APP_ENV": app_env, **REAL, "API_DOCS": value}).api_docs is expected
    with pytest.raises(ConfigError, match="API_DOCS"):
        Settings.from_env({"APP_ENV": app_env, **REAL, "API_DOCS": "sometimes"})


def test_rotation_pairs_are_added_to_the_main_pair():
    settings = Settings.from_env({**REAL, "PROVIDER_API_EXTRA_CREDENTIALS": f"k2:{TOKEN}2, k3:{TOKEN}3"})
    assert settings.credentials == (("k1", TOKEN), ("k2", TOKEN + "2"), ("k3", TOKEN + "3"))


@pytest.mark.parametrize("extra", ["k2", "k2:", ":t2", "k2:t2,junk"])
def test_malformed_rotation_pairs_are_refused(extra):
    with pytest.raises(ConfigError, match="PROVIDER_API_EXTRA_CREDENTIALS"):
        Settings.from_env({**DEV, **REAL, "PROVIDER_API_EXTRA_CREDENTIALS": extra})


def test_key_without_token_is_refused():
    with pytest.raises(ConfigError, match="together"):
        Settings.from_env({**DEV, "PROVIDER_API_APP_KEY": "k1"})


@pytest.mark.parametrize("name,value", [("HOLD_LIFETIME_SECONDS", "soon"), ("MAX_TRANSACTION_AMOUNT", "lots")])
def test_unparseable_numbers_are_refused(name, value):
    with pytest.raises(ConfigError):
        Settings.from_env({**DEV, name: value})


def test_every_valid_pair_is_accepted_and_halves_of_two_pairs_are_not(backend):
    app = create_app(make_settings(), redis_client=backend)
    client = app.test_client()

    def status(key, token):
        return client.get("/giftcards/nope", headers={"X-PROVIDER-API-AppKey": key, "X-PROVIDER-API-AppToken": token})

    assert status("test-app-key", "test-app-token").status_code == 404  # authenticated: the card is unknown
    assert status("old-key", "old-token").status_code == 404
    crossed = status("test-app-key", "old-token")
    assert (crossed.status_code, crossed.get_data()) == (403, b"")
    missing = client.get("/giftcards/nope", headers={"X-PROVIDER-API-AppKey": "test-app-key"})
    assert (missing.status_code, missing.get_data()) == (401, b"")
    # An empty body has no media type: no Content-Type at all (Flask's default would say text/html).
    assert "Content-Type" not in crossed.headers and "Content-Type" not in missing.headers
