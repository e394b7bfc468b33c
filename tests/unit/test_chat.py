"""The pure part of chat channels: commands, conversations, replies, splitting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.chat import TELEGRAM_LIMIT, Message, command, conversation_key, reply_text, split


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/status", "status"),
        ("  /cancel  ", "cancel"),
        ("/new@corral_bot", "new"),
        ("/new please", None),
        ("/help", None),
        ("status", None),
        ("what is /status?", None),
    ],
    ids=["status", "spaces", "group-form", "with-words", "unknown", "no-slash", "inside"],
)
def test_command(text: str, expected: str | None) -> None:
    assert command(text) == expected


def test_a_thread_is_one_conversation_else_each_user_is() -> None:
    assert conversation_key("c1", "t9", "u1") == conversation_key("c1", "t9", "u2")
    assert conversation_key("c1", None, "u1") != conversation_key("c1", None, "u2")
    assert conversation_key("c1", None, "u1") != conversation_key("c2", None, "u1")


def test_a_message_key_names_the_chat_and_message_not_the_text() -> None:
    a = Message("tg", "42", "7", "hello", "100")
    assert a.key == Message("tg", "42", "7", "edited", "100").key
    assert a.key != Message("tg", "43", "7", "hello", "100").key
    assert a.key != Message("other", "42", "7", "hello", "100").key
    assert len(a.key) <= 200


@pytest.mark.parametrize(
    ("state", "result", "error", "expected"),
    [
        ("done", " Paris. ", None, "Paris."),
        ("done", "", None, "(done, no output)"),
        ("failed", None, "model exploded", "Failed: model exploded"),
        ("cancelled", None, "cancelled by chat", "Cancelled."),
    ],
    ids=["done", "done-empty", "failed", "cancelled"],
)
def test_reply_text(state: str, result: str | None, error: str | None, expected: str) -> None:
    assert reply_text(state, result, error) == expected


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_split_keeps_short_texts_whole_and_cuts_long_ones_at_paragraphs() -> None:
    assert split("hello") == ["hello"]
    para = "word " * 700  # 3500 characters
    pieces = split(f"{para}\n\n{para}")
    assert len(pieces) == 2
    assert all(_units(p) <= TELEGRAM_LIMIT for p in pieces)
    assert pieces[0] == para.strip()


def test_split_counts_utf16_units_like_telegram() -> None:
    text = "😀" * 3000  # 6000 UTF-16 units, no spaces
    pieces = split(text)
    assert [_units(p) for p in pieces] == [4096, 6000 - 4096]
    assert "".join(pieces) == text


@given(st.text(min_size=0, max_size=12_000), st.integers(min_value=2, max_value=5000))
def test_split_never_loses_words_nor_makes_empty_or_long_pieces(text: str, limit: int) -> None:
    pieces = split(text, limit)
    assert all(p and _units(p) <= limit for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())
