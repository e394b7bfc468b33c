"""The tracker intake's pure parts: priorities, the preamble, follow-ups,
webhook signatures (GitHub and Forgejo/Gitea) and the rate-limit sleeps."""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral import tracker
from corral.config import TrackerSettings
from corral.forges import Forgejo, GitHub, RateLimited


@pytest.mark.parametrize(
    ("labels", "priority"),
    [
        ([], 2),
        (["bug"], 2),
        (["P0"], 0),
        (["p1"], 1),
        (["P3", "P1"], 1),
        (["priority/p0", "corral"], 0),
        (["Priority: P2"], 2),
    ],
    ids=["none", "other", "P0", "case", "most-urgent", "slash", "colon"],
)
def test_priority_from_labels(labels: list[str], priority: int) -> None:
    assert tracker.priority_of(labels, tracker.DEFAULT_PRIORITIES) == priority


def test_a_configured_priority_map_replaces_the_default() -> None:
    assert tracker.priority_of(["urgent", "P0"], {"urgent": 1}) == 1


def test_the_preamble_names_only_known_fields() -> None:
    text = tracker.prompt(
        "#{number} {title} ({repo}) {url}\n", title="T", body="B", url="U", repo="o/r", number=7
    )
    assert text == "#7 T (o/r) U\nB"
    with pytest.raises(ValueError, match=r"unknown field\(s\) nope"):
        tracker.check_template("{nope}")
    with pytest.raises(ValueError, match="nope"):
        TrackerSettings(name="t", kind="github", preamble="{title} {nope}")


@given(st.text(max_size=200))
def test_issue_text_is_never_interpreted(body: str) -> None:
    """Braces in the issue text stay text (no format-string access)."""
    text = tracker.prompt(
        "{title}:", title="{body.__class__}", body=body, url="", repo="", number=1
    )
    assert text == "{body.__class__}:" + (body or "{body.__class__}")


def test_an_issue_over_the_prompt_limit_is_cut_with_a_note() -> None:
    text = tracker.prompt(
        "", title="t", body="x" * (tracker.PROMPT_LIMIT + 10), url="", repo="", number=1
    )
    assert len(text) == tracker.PROMPT_LIMIT and text.endswith("characters]")


@pytest.mark.parametrize(
    ("body", "request_"),
    [
        ("@corral please add tests", "please add tests"),
        ("thanks @Corral: now the docs", "thanks : now the docs"),
        ("a person to a person", None),
        ("@corral", None),
    ],
    ids=["leading", "case-and-middle", "no-trigger", "trigger-only"],
)
def test_follow_up_needs_the_trigger(body: str, request_: str | None) -> None:
    assert tracker.follow_up(body, "@corral") == request_


def test_keys_make_one_job_per_issue_and_one_turn_per_comment() -> None:
    assert tracker.job_key("hub", "o/r", 3) == "tracker:hub:o/r#3"
    assert tracker.comment_key("hub", "o/r", 3, 99) == "tracker:hub:o/r#3:comment:99"


@given(st.binary(max_size=500), st.text(min_size=16, max_size=40))
def test_signatures_as_github_and_forgejo_send_them(body: bytes, secret: str) -> None:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert GitHub.verify(secret, body, {"X-Hub-Signature-256": f"sha256={digest}"})
    assert Forgejo.verify(secret, body, {"X-Gitea-Signature": digest})
    assert Forgejo.verify(secret, body, {"X-Forgejo-Signature": digest})
    assert not GitHub.verify(secret, body, {"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert not GitHub.verify(secret, body, {})
    assert not Forgejo.verify(secret + "x", body, {"X-Gitea-Signature": digest})
    # One tracker's header is not the other's.
    assert not GitHub.verify(secret, body, {"X-Gitea-Signature": digest})


async def _token() -> str:
    return "t"


async def test_a_spent_rate_limit_makes_the_client_wait_without_asking() -> None:
    reset = int(time.time()) + 120
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            403,
            json={"message": "API rate limit exceeded"},
            headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
        )

    gh = GitHub(None, _token, transport=httpx.MockTransport(answer))
    with pytest.raises(RateLimited) as first:
        await gh.issues("o/r", label="corral", since=None)
    assert first.value.until == reset
    with pytest.raises(RateLimited):  # no request: it waits until the reset
        await gh.issues("o/r", label="corral", since=None)
    assert calls == 1
    await gh.aclose()


async def test_retry_after_is_honoured() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"message": "slow down"}, headers={"Retry-After": "30"})

    fj = Forgejo("http://forge.invalid", _token, transport=httpx.MockTransport(answer))
    before = time.time()
    with pytest.raises(RateLimited) as exc:
        await fj.issues("o/r", label=None, since=None)
    assert before + 29 <= exc.value.until <= time.time() + 31
    await fj.aclose()
