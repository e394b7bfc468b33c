"""Settings: defaults, corral.toml, CORRAL_* overrides, errors, masking."""

from __future__ import annotations

import json
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
    assert (s.default_provider, s.default_local) == (None, None)  # prose is refused, not run


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


AGENTS = """
[providers.claude]
kind = "claude-code"
[providers.gpu]
kind = "openai"
[providers.off]
kind = "codex"
enabled = false
[providers.sh]
kind = "shell"
"""


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('default_provider = "claud"\n', "default_provider 'claud' is not a configured provider"),
        ('default_provider = "off"\n', "default_provider 'off' is disabled"),
        ('default_provider = "shell"\n', "default_provider 'shell' is a shell"),
        ('default_provider = "sh"\n', "default_provider 'sh' is a shell"),
        ('default_local = "gpu"\n', "default_local 'gpu' is remote"),
        ('default_local = "shell"\n', "name an enabled local agent provider \\(claude\\)"),
        ("[providers.cc]\nkind = 'codex'\nrunner = 'box'\n", "only a remote provider is assigned"),
    ],
    ids=["unknown", "disabled", "builtin-shell", "shell-kind", "remote-local", "local", "runner"],
)
def test_defaults_must_name_enabled_agents(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "corral.toml").write_text(text + AGENTS)
    with pytest.raises(ConfigError, match=needle):
        load_settings()


def test_default_provider_may_be_local_or_remote(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(
        'default_provider = "gpu"\ndefault_local = "claude"\n' + AGENTS
    )
    s = load_settings()
    assert (s.default_provider, s.default_local) == ("gpu", "claude")


def test_the_embedded_runner_serves_remote_providers_unless_assigned(tmp_path: Path) -> None:
    """Listing local providers in [runner] providers does not drop the remote ones."""
    (tmp_path / "corral.toml").write_text(
        '[runner]\nproviders = ["shell", "claude"]\n'
        + AGENTS
        + '[providers.t3]\nkind = "t3"\n[providers.far]\nkind = "openai"\nrunner = "box"\n'
        + '[providers.here]\nkind = "openai"\nrunner = "embedded"\n'
    )
    s = load_settings()
    assert s.embedded_providers() == ["shell", "claude", "gpu", "here", "t3"]
    assert s.runner_serves(["shell"], "box") == ["shell", "far"]
    assert load_settings().runner_serves(["gpu"], "embedded") == ["gpu", "here", "t3"]


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


def test_a_command_string_is_split_into_words_never_run_by_a_shell(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(
        "[agents.bot]\ncommand = \"python -m 'my bot' --flag=a\\\\ b\"\n\n"
        "[agents.listed]\ncommand = ['echo', 'x;', '$HOME']\n\n"
        "[providers.claude]\nkind = 'claude-code'\ncommand = \"node '/opt/claude cli/cli.js'\"\n"
        "token_command = \"pass show 'claude key'\"\n"
    )
    s = load_settings()
    assert s.agents["bot"].command == ["python", "-m", "my bot", "--flag=a b"]
    assert s.agents["listed"].command == ["echo", "x;", "$HOME"]  # a list: as given
    assert s.providers["claude"].command == ["node", "/opt/claude cli/cli.js"]
    assert s.providers["claude"].token_command == ["pass", "show", "claude key"]


@pytest.mark.parametrize(
    ("table", "command", "shown"),
    [
        ("agents.bot", "echo x; sleep 1000", "(;)"),
        ("agents.bot", "run | tee log", "(|)"),
        ("agents.bot", "a && b > out", "(&& >)"),
        ("agents.bot", "echo $HOME", "($HOME)"),
        ("providers.c", "claude $(cat flags)", "("),
        ("providers.t", "cat `ls key*`", "(`ls key*`)"),
    ],
)
def test_a_command_string_with_shell_syntax_is_refused(
    tmp_path: Path, table: str, command: str, shown: str
) -> None:
    kind = {"agents.bot": "", "providers.c": "kind = 'claude-code'\n"}.get(
        table, "kind = 'openai'\n"
    )
    field = "token_command" if table == "providers.t" else "command"
    (tmp_path / "corral.toml").write_text(f"[{table}]\n{kind}{field} = {json.dumps(command)}\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = info.value.message
    assert f"uses shell syntax {shown}" in message, message
    assert "not by a shell" in message
    assert f'["sh", "-c", {json.dumps(command)}]' in message


def test_what_sandboxed_jobs_must_not_see(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "corral.toml"
    config.parent.mkdir()
    config.write_text(
        "[runner]\nsandbox_hide = ['/srv/secrets']\n\n"
        "[providers.gpu]\nkind = 'openai'\ntoken_file = '/etc/corral/gpu.token'\n"
    )
    s = load_settings(
        config, data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/db/c.db"
    )
    db = tmp_path / "db" / "c.db"
    assert s.sandbox_hidden() == [
        tmp_path / "data",
        tmp_path / "data" / "admin.key",
        tmp_path / "data" / "runner.key",
        tmp_path / "etc" / "queue",
        config,
        db,
        db.with_name("c.db-wal"),
        db.with_name("c.db-shm"),
        db.with_name("c.db-journal"),
        Path("/etc/corral/gpu.token"),
        Path("/srv/secrets"),
    ]
    assert s.runner.sandbox == "auto"
