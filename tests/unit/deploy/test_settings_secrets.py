"""Settings from secret files (`get_settings`, pydantic-settings' secrets directory): a file per
setting named like its variable in lower case. Precedence, as pydantic-settings orders its
sources: an explicit argument > the environment variable > the secret file > the default."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from werkstroom import settings as settings_module
from werkstroom.settings import Settings, get_settings, resolve_secrets_dir, with_password

VARIABLES = (
    "WERKSTROOM_SECRETS_DIR",
    "WERKSTROOM_ADMIN_TOKEN",
    "WERKSTROOM_CLICKHOUSE_PASSWORD",
    "WERKSTROOM_CLICKHOUSE_URL",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # No /run/secrets of the machine running the tests.
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", tmp_path / "no-such-dir")


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "werkstroom_admin_token").write_text("token-from-file\n")
    (directory / "werkstroom_clickhouse_password").write_text("p@ss/w:rd %&\n")
    return directory


def test_files_set_the_fields_they_are_named_after(secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WERKSTROOM_CLICKHOUSE_URL", "http://werkstroom@clickhouse:8123")
    monkeypatch.setenv("WERKSTROOM_SECRETS_DIR", str(secrets))
    s = get_settings()
    assert s.secrets_dir == secrets
    assert s.admin_token == SecretStr("token-from-file")  # the trailing newline dropped
    assert s.clickhouse_password == SecretStr("p@ss/w:rd %&")
    # The URL has no password: it takes the secret's, URL-encoded.
    assert s.effective_clickhouse_url == "http://werkstroom:p%40ss%2Fw%3Ard%20%25%26@clickhouse:8123"
    masked = s.masked()
    assert masked["clickhouse_url"] == "http://werkstroom:***@clickhouse:8123"
    assert masked["admin_token"] == masked["clickhouse_password"] == "***"
    assert "p@ss" not in str(masked) and "token-from-file" not in str(masked)


def test_the_environment_wins_over_a_file_and_an_argument_over_both(
    secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WERKSTROOM_ADMIN_TOKEN", "token-from-env")
    assert get_settings(secrets_dir=secrets).admin_token == SecretStr("token-from-env")
    assert get_settings(secrets_dir=secrets, admin_token="explicit").admin_token == SecretStr("explicit")
    # The other secret still comes from its file.
    assert get_settings(secrets_dir=secrets).clickhouse_password == SecretStr("p@ss/w:rd %&")


def test_a_password_in_the_url_wins_over_the_separate_one(secrets: Path) -> None:
    s = get_settings(secrets_dir=secrets, clickhouse_url="http://u:in-url@ch:8123")
    assert s.effective_clickhouse_url == "http://u:in-url@ch:8123"
    assert get_settings().effective_clickhouse_url.startswith("chdb://")  # embedded: no password
    assert with_password("https://ch:8443/db", SecretStr("x")) == "https://default:x@ch:8443/db"
    assert with_password("chdb:///data", SecretStr("x")) == "chdb:///data"
    assert with_password("http://u@ch:8123", None) == "http://u@ch:8123"


def test_which_directory(secrets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_secrets_dir() is None  # no variable, no /run/secrets
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", secrets)
    assert resolve_secrets_dir() == secrets  # /run/secrets, when it exists
    assert get_settings().admin_token == SecretStr("token-from-file")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("WERKSTROOM_SECRETS_DIR", str(other))
    assert resolve_secrets_dir() == other  # the variable over the default
    assert get_settings().admin_token is None
    assert resolve_secrets_dir(secrets) == secrets  # an argument over the variable
    monkeypatch.setenv("WERKSTROOM_SECRETS_DIR", "")
    assert resolve_secrets_dir() is None and get_settings().secrets_dir is None  # empty: none
    monkeypatch.setenv("WERKSTROOM_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is not a directory"):
        get_settings()  # a directory named but absent fails at start, not silently


def test_settings_built_directly_read_no_files(secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the factory reads secret files: tests and code that build Settings() stay isolated."""
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", secrets)
    assert Settings().admin_token is None


def test_an_empty_secret_file_is_an_error(secrets: Path) -> None:
    (secrets / "werkstroom_admin_token").write_text("\n")
    with pytest.raises(ValidationError, match="admin_token"):
        get_settings(secrets_dir=secrets)
