"""Settings: defaults, corral.toml, CORRAL_* overrides, errors, masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.config import load_settings, masked
from corral.errors import ConfigError
from corral.executors.chat import OpenAISettings
from corral.executors.claude_code import ClaudeCodeSettings


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
            "gpu": {"kind": "openai", "api_key": "sk-topsecret"},
            "claude": {"kind": "claude-code", "env": {"X": "envsecret"}},
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
        "[providers.gpu]\nkind = 'openai'\ntoken_command = \"pass show 'gpu key'\"\n"
    )
    s = load_settings()
    assert s.agents["bot"].command == ["python", "-m", "my bot", "--flag=a b"]
    assert s.agents["listed"].command == ["echo", "x;", "$HOME"]  # a list: as given
    claude, gpu = s.providers["claude"], s.providers["gpu"]
    assert isinstance(claude, ClaudeCodeSettings) and isinstance(gpu, OpenAISettings)
    assert claude.command == ["node", "/opt/claude cli/cli.js"]
    assert gpu.token_command == ["pass", "show", "gpu key"]


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


BUILT_IN = {
    "shell": True,
    "claude-code": True,
    "codex": True,
    "openai": False,
    "anthropic": False,
    "corral": False,
    "t3": False,
}


def test_each_kind_declares_its_settings_and_whether_it_is_local() -> None:
    from corral.executors.base import kinds, load
    from corral.executors.settings import ProviderSettings

    assert set(BUILT_IN) <= set(kinds())
    models = set()
    for kind, local in BUILT_IN.items():
        executor = load(kind)
        assert executor.local is local, kind
        assert issubclass(executor.settings, ProviderSettings), kind
        assert executor.settings.model_config.get("extra") == "forbid", kind
        models.add(executor.settings)
    assert len(models) == len(BUILT_IN)  # one model per kind


@pytest.mark.parametrize("kind", sorted(BUILT_IN))
def test_a_table_becomes_its_kinds_settings(tmp_path: Path, kind: str) -> None:
    from corral.executors.base import load

    (tmp_path / "corral.toml").write_text(f"[providers.p]\nkind = '{kind}'\nconcurrency = 2\n")
    s = load_settings()
    p = s.providers["p"]
    assert type(p) is load(kind).settings
    assert (p.kind, p.concurrency, p.is_local) == (kind, 2, BUILT_IN[kind])
    assert s.provider_table()["p"].local is BUILT_IN[kind]


@pytest.mark.parametrize(
    ("kind", "key", "value"),
    [
        ("openai", "sandbox", "'read-only'"),  # codex's
        ("openai", "env", "{ X = '1' }"),  # local kinds'
        ("anthropic", "embedding_model", "'e'"),  # openai's
        ("t3", "permission_mode", "'acceptEdits'"),  # claude-code's
        ("codex", "max_turns", "3"),  # claude-code's
        ("claude-code", "base_url", "'http://x'"),  # remote kinds'
        ("shell", "model", "'m'"),
        ("corral", "local", "true"),  # gone: the executor says
    ],
)
def test_a_key_its_kind_does_not_take_is_refused_naming_key_kind_and_keys(
    tmp_path: Path, kind: str, key: str, value: str
) -> None:
    from corral.executors.base import load

    (tmp_path / "corral.toml").write_text(f"[providers.p]\nkind = '{kind}'\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = info.value.message
    assert f"providers.p.{key}: '{key}' is not a setting of kind '{kind}'" in message, message
    takes = ", ".join(load(kind).settings.model_fields)
    assert f"(kind '{kind}' takes: {takes})" in message, message


def test_runner_on_a_local_provider_says_why() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(providers={"sh": {"kind": "shell", "runner": "box"}})
    assert "providers.sh.runner: 'runner' is not a setting of kind 'shell': only a remote" in (
        info.value.message
    )


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"kind": "gemini"}, "providers.g.kind: no executor of kind 'gemini' is installed"),
        ({"model": "m"}, "providers.g.kind: missing: the executor kind, one of anthropic, "),
        ({"kind": 3}, "providers.g.kind: 3 is not a kind"),
        ("openai", "providers.g: a provider is a table"),
        ({"kind": "openai", "timeout": -1}, "providers.g.timeout: Input should be greater than 0"),
    ],
    ids=["unknown-kind", "no-kind", "bad-kind", "not-a-table", "bad-value"],
)
def test_a_bad_provider_table_says_what_to_fix(table: object, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(providers={"g": table})
    assert needle in info.value.message, info.value.message
    if "kind" in needle:
        assert "codex, corral, openai, shell, t3" in info.value.message


def test_provider_tables_from_the_environment_are_checked_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORRAL_PROVIDERS", '{"gpu": {"kind": "openai", "sandbox": "x"}}')
    with pytest.raises(ConfigError, match=r"providers\.gpu\.sandbox: 'sandbox' is not a setting"):
        load_settings()
    monkeypatch.setenv("CORRAL_PROVIDERS", '{"gpu": {"kind": "openai", "max_retries": "3"}}')
    gpu = load_settings().providers["gpu"]
    assert isinstance(gpu, OpenAISettings) and gpu.max_retries == 3


def test_config_show_has_each_kinds_own_settings_with_secrets_masked(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text(
        "[providers.cx]\nkind = 'codex'\nsandbox = 'read-only'\n"
        "env = { OPENAI_API_KEY = 'sk-x1' }\n"
        "[providers.gpu]\nkind = 'openai'\napi_key = 'sk-topsecret'\nembedding_model = 'e5'\n"
    )
    data = masked(load_settings())
    cx, gpu = data["providers"]["cx"], data["providers"]["gpu"]
    assert (cx["sandbox"], cx["env"], cx["network"]) == (
        "read-only",
        {"OPENAI_API_KEY": "********"},
        True,
    )
    assert "base_url" not in cx and "sandbox" not in gpu and "env" not in gpu
    assert gpu["embedding_model"] == "e5" and gpu["api_key"] != "sk-topsecret"
    assert "sk-" not in json.dumps(data)


def test_the_runners_provider_map_has_each_kinds_settings(tmp_path: Path) -> None:
    from corral.executors.shell import ShellSettings

    (tmp_path / "corral.toml").write_text(AGENTS)
    table = load_settings().runner_providers(["shell", "claude", "gpu"])
    assert isinstance(table["shell"], ShellSettings)
    assert isinstance(table["claude"], ClaudeCodeSettings)
    assert isinstance(table["gpu"], OpenAISettings)


def test_the_connection_budget_has_one_default() -> None:
    """A ``Store`` opened without settings (tests, scripts) sizes its pools by
    ``store.db.CONNECTIONS``; the store does not import the settings, so the
    two defaults are held equal here."""
    from corral.config import Settings
    from corral.store import db

    assert Settings.model_fields["database_connections"].default == db.CONNECTIONS
