"""Settings: defaults, corral.toml, CORRAL_* overrides, errors, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.config import load_settings, masked
from corral.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (
        "CORRAL_HOST",
        "CORRAL_PORT",
        "CORRAL_DATA_DIR",
        "CORRAL_DATABASE_URL",
        "CORRAL_RUNNER__SLOTS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port) == ("127.0.0.1", 8487)
    assert s.effective_database_url == f"sqlite:///{s.data_dir / 'corral.db'}"
    assert s.runner.providers == ["shell"]


def test_toml_then_env_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "corral.toml").write_text('port = 9000\nhost = "0.0.0.0"\n[runner]\nslots = 7\n')
    s = load_settings()
    assert (s.port, s.host, s.runner.slots) == (9000, "0.0.0.0", 7)
    assert s.local_url() == "http://127.0.0.1:9000"
    monkeypatch.setenv("CORRAL_PORT", "9100")
    monkeypatch.setenv("CORRAL_RUNNER__SLOTS", "9")
    s = load_settings()
    assert (s.port, s.runner.slots) == (9100, 9)
    assert load_settings(port=9200).port == 9200


def test_explicit_config_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text(f'data_dir = "{tmp_path / "d"}"\n')
    assert load_settings(path).data_dir == tmp_path / "d"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("prot = 1\n", "prot"),
        ("port = 'x'\n", "port"),
        ("port = 1\n[runner]\nslotz = 2\n", "runner.slotz"),
        ("port = \n", "cannot read"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-nested", "syntax"],
)
def test_bad_config_says_what_to_fix(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "corral.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings()


def test_secrets_are_masked() -> None:
    s = load_settings(
        database_url="postgresql+asyncpg://u:hunter2@db/corral", jwt_secret="s3cret" * 8
    )
    shown = str(masked(s))
    assert "hunter2" not in shown and "s3cret" not in shown
    assert "postgresql+asyncpg://u:********@db/corral" in shown


def test_provider_agent_and_webhook_secrets_are_masked() -> None:
    s = load_settings(
        providers={
            "gpu": {"kind": "openai", "api_key": "sk-topsecret", "env": {"X": "envsecret"}},
        },
        agents={"bot": {"command": "run-bot", "env": {"BOT_TOKEN": "botsecret"}}},
        webhooks=[{"url": "http://h/x", "secret": "hooksecret-0123456789"}],
        webhook_secret="defaultsecret-0123",
    )
    shown = str(masked(s))
    for secret in ("sk-topsecret", "envsecret", "botsecret", "hooksecret", "defaultsecret"):
        assert secret not in shown, secret
    assert "BOT_TOKEN" in shown and "http://h/x" in shown
