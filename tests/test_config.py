"""Settings from the environment: production refuses demo secrets; rotation pairs parse strictly."""

import pytest

from giftcard_provider import create_app
from giftcard_provider.config import DEMO_APP_KEY, ConfigError, Settings

from .conftest import make_settings

REAL = {"PROVIDER_API_APP_KEY": "k1", "PROVIDER_API_APP_TOKEN": "t1", "CODE_HASH_SECRET": "s"}


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
    assert settings.credentials == (("k1", "t1"),)
    assert not settings.uses_demo_credentials
    assert DEMO_APP_KEY not in dict(settings.credentials)


def test_development_defaults_to_the_demo_pair():
    assert Settings.from_env({}).uses_demo_credentials


def test_rotation_pairs_are_added_to_the_main_pair():
    settings = Settings.from_env({**REAL, "PROVIDER_API_EXTRA_CREDENTIALS": "k2:t2, k3:t3"})
    assert settings.credentials == (("k1", "t1"), ("k2", "t2"), ("k3", "t3"))


@pytest.mark.parametrize("extra", ["k2", "k2:", ":t2", "k2:t2,junk"])
def test_malformed_rotation_pairs_are_refused(extra):
    with pytest.raises(ConfigError, match="PROVIDER_API_EXTRA_CREDENTIALS"):
        Settings.from_env({**REAL, "PROVIDER_API_EXTRA_CREDENTIALS": extra})


def test_key_without_token_is_refused():
    with pytest.raises(ConfigError, match="together"):
        Settings.from_env({"PROVIDER_API_APP_KEY": "k1"})


@pytest.mark.parametrize("name,value", [("HOLD_LIFETIME_SECONDS", "soon"), ("MAX_TRANSACTION_AMOUNT", "lots")])
def test_unparseable_numbers_are_refused(name, value):
    with pytest.raises(ConfigError):
        Settings.from_env({name: value})


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
