"""Redaction of known secrets: what is added, what is replaced, what is left."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import redact
from corral.cli import logs
from corral.config import load_settings
from corral.jsontext import dumps
from corral.models import NewEvent, Outcome
from corral.redact import REDACTED, Secrets


def test_known_values_and_key_shapes_are_replaced() -> None:
    s = Secrets()
    s.add("sk-live-0123456789abcdef", "short", None, "")
    text = (
        "HTTP 401: Incorrect API key provided: sk-live-0123456789abcdef; "
        "Authorization: Bearer abc.def-ghi; key crl_0a1b2c_SeCrEt-value"
    )
    assert s.text(text) == (
        f"HTTP 401: Incorrect API key provided: {REDACTED}; "
        f"Authorization: Bearer {REDACTED}; key crl_0a1b2c_{REDACTED}"
    )
    assert s.text("short is too short to be a secret") == "short is too short to be a secret"


def test_the_longest_secret_is_replaced_whole() -> None:
    s = Secrets()
    s.add("abcdefgh", "abcdefgh-and-more")
    assert s.text("x abcdefgh-and-more y abcdefgh") == f"x {REDACTED} y {REDACTED}"


def test_data_is_redacted_deeply_and_untouched_data_is_the_same_object() -> None:
    s = Secrets()
    s.add("token-0123456789")
    clean = {"line": "hello", "n": 3, "items": ["a", {"b": None}]}
    assert s.data(clean) is clean
    dirty = {"line": "hello", "nested": {"items": ["x", "token-0123456789"]}, "n": 1}
    assert s.data(dirty) == {"line": "hello", "nested": {"items": ["x", REDACTED]}, "n": 1}
    assert dirty["nested"]["items"][1] == "token-0123456789"  # the input is not changed


# Secrets JSON writes escaped: a quote, a backslash, a control character,
# non-ASCII, a character outside the BMP.
_AWKWARD = (
    'pass"word-1234',
    "back\\slash-9876",
    "tab\there-5555",
    "clé-secrète-42",
    "emoji🐎-key-77",
)
# (A lone surrogate sends ``jsontext.dumps`` to its fallback, which escapes non-ASCII.)
_TEXT = st.text(alphabet=st.sampled_from([*'ab "\\\t\n\x1bé🐎-crlBearer_1', "\ud800"]), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


def _planted(value: object, secret: str, where: int) -> object:
    """``value`` with ``secret`` planted inside its ``where``-th string, if any."""
    seen = [0]

    def walk(v: object) -> object:
        if isinstance(v, str):
            seen[0] += 1
            return v[:1] + secret + v[1:] if seen[0] == where + 1 else v
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    return walk(value)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.dictionaries(_TEXT, _JSON, max_size=4),
    which=st.integers(0, 4),
    where=st.integers(0, 6),
)
def test_a_payload_s_json_text_is_suspect_whenever_its_value_holds_a_secret(
    payload: dict[str, object], which: int, where: int
) -> None:
    """The check on an event's JSON text (``suspect``) misses nothing that
    walking its value (``data``) would redact, whatever JSON escapes."""
    s = Secrets()
    s.add(*_AWKWARD)
    for value in (payload, _planted(payload, _AWKWARD[which], where)):
        if not s.suspect(dumps(value)):
            assert s.data(value) is value
    assert s.suspect(dumps({"line": f"x {_AWKWARD[which]} y"}))
    assert s.suspect(dumps({"line": "Bearer abc.def"})) and s.suspect(dumps(["crl_0a_x"]))
    assert not s.suspect(dumps({"line": "hello", "stream": "stdout", "n": [1, 2.5, None]}))


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.dictionaries(_TEXT, _JSON, max_size=3), max_size=6),
    planted=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(0, 6))),
)
def test_a_batch_is_suspect_exactly_where_its_payloads_are(
    payloads: list[dict[str, object]], planted: list[tuple[int, int, int]]
) -> None:
    """``suspects`` (one look at a whole batch's text first) names the very
    payloads ``suspect`` names one by one: a secret, a corral key or a
    bearer token in any of them."""
    s = Secrets()
    s.add(*_AWKWARD)
    for at, which, where in planted:
        if at < len(payloads):
            payloads[at] = _planted(payloads[at], _AWKWARD[which], where)
    texts = [dumps(p) for p in payloads]
    assert s.suspects(texts) == [i for i, t in enumerate(texts) if s.suspect(t)]
    assert s.suspects([dumps(["clean"]), dumps(["Bearer abc.def"])]) == [1]


def test_outcomes_and_events_are_redacted() -> None:
    redact.add("sk-outcome-0123456789")
    out = redact.outcome(
        Outcome(status="failed", error="bad key sk-outcome-0123456789", result="r")
    )
    assert out.error == f"bad key {REDACTED}" and out.result == "r"
    clean = Outcome(status="done", result="fine")
    assert redact.outcome(clean) is clean
    ev = redact.event(NewEvent(type="output", payload={"line": "sk-outcome-0123456789"}))
    assert ev.payload == {"line": REDACTED}


def test_a_configuration_s_secrets_are_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("file-token-0123456789\n")
    (tmp_path / "corral.toml").write_text(
        f"""
jwt_secret = "{"j" * 40}"
webhook_secret = "webhook-secret-0123456789"
database_url = "postgresql+asyncpg://corral:db-password-123@db/corral"
[[webhooks]]
url = "https://hooks.example.com/x"
secret = "endpoint-secret-0123456789"
[providers.a]
kind = "openai"
api_key = "inline-key-0123456789"
[providers.b]
kind = "openai"
api_key_env = "B_KEY"
[providers.c]
kind = "anthropic"
token_file = "{token}"
[providers.d]
kind = "claude-code"
env = {{ ANTHROPIC_API_KEY = "sk-ant-env-0123456789", ANTHROPIC_BASE_URL = "https://a.example" }}
[agents.bot]
command = "python -m bot"
env = {{ BOT_TOKEN = "bot-token-0123456789", MODE = "production-mode" }}
"""
    )
    monkeypatch.setenv("B_KEY", "env-key-0123456789")
    monkeypatch.chdir(tmp_path)
    found = set(load_settings(tmp_path / "corral.toml").secrets())
    assert found == {
        "j" * 40,
        "webhook-secret-0123456789",
        "db-password-123",
        "endpoint-secret-0123456789",
        "inline-key-0123456789",
        "env-key-0123456789",
        "file-token-0123456789",
        "sk-ant-env-0123456789",
        "bot-token-0123456789",
    }


async def test_reading_a_credential_makes_it_known(tmp_path: Path) -> None:
    from corral.executors.chat import OpenAISettings

    token = tmp_path / "token"
    token.write_text("rotated-key-0123456789\n")  # a token file: read for every use
    assert await OpenAISettings(kind="openai", token_file=token).credential()
    assert redact.text("echo rotated-key-0123456789") == f"echo {REDACTED}"


def test_log_lines_and_tracebacks_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    redact.add("logged-secret-0123456789")
    logs.setup("INFO", "text")
    try:
        log = logging.getLogger("corral.test")
        log.warning("upstream said %s", "invalid key logged-secret-0123456789")
        try:
            raise RuntimeError("boom logged-secret-0123456789")
        except RuntimeError:
            log.exception("failed")
    finally:
        logging.getLogger().handlers[:] = []
    err = capsys.readouterr().err
    assert "logged-secret-0123456789" not in err
    assert "upstream said invalid key [redacted]" in err
    assert f"RuntimeError: boom {REDACTED}" in err
