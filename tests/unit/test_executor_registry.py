"""A third-party executor registers the way the built-ins do (entry point
group ``corral.executors``) and brings its own settings model: its provider
tables are checked against that model."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.config import load_settings
from corral.errors import ConfigError
from corral.executors.base import kinds, load

PLUGIN = '''
from typing import ClassVar

from pydantic import Field

from corral.executors.settings import ProviderSettings, RemoteSettings


class EchoSettings(RemoteSettings):
    """Echoes the prompt back."""

    greeting: str = Field("hi", description="What it says first.")


class EchoExecutor:
    kind: ClassVar[str] = "echo"
    settings: ClassVar[type[ProviderSettings]] = EchoSettings
    local: ClassVar[bool] = False

    async def run(self, ctx):
        raise NotImplementedError

    async def cancel(self):
        pass


class Unsure(EchoExecutor):
    settings = None
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / "corral_echo.py").write_text(PLUGIN)
    info = tmp_path / "corral_echo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: corral-echo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[corral.executors]\necho = corral_echo:EchoExecutor\nunsure = corral_echo:Unsure\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    load.cache_clear()
    yield
    load.cache_clear()


def test_a_third_party_kind_brings_its_settings(plugin: None) -> None:
    assert "echo" in kinds()
    s = load_settings(providers={"e": {"kind": "echo", "greeting": "yo", "runner": "box"}})
    e = s.providers["e"]
    assert type(e).__name__ == "EchoSettings" and e.greeting == "yo"  # type: ignore[attr-defined]
    assert s.provider_table()["e"].local is False
    assert s.runner_serves([], "box") == ["e"]


def test_a_third_party_kind_refuses_keys_it_does_not_take(plugin: None) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(providers={"e": {"kind": "echo", "sandbox": "read-only"}})
    assert "providers.e.sandbox: 'sandbox' is not a setting of kind 'echo'" in info.value.message
    assert "greeting)" in info.value.message


def test_an_executor_without_a_settings_model_is_refused(plugin: None) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(providers={"u": {"kind": "unsure"}})
    assert "providers.u.kind: executor 'unsure'" in info.value.message
    assert "declares no settings model" in info.value.message
