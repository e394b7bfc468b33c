"""queue_file.parse: front matter + body -> JobCreate, or a precise error."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.queue_file import QueueFileError, parse


def test_front_matter_and_body() -> None:
    job = parse(
        "---\ntitle: Fix it\npriority: 1\nlabels: [bug]\nprovider: claude\n"
        "needs_claude_code: true\ncomplexity_hint: high\nsession: s1\n---\n\nDo the thing.\n",
        source_ref="queue/fix.md",
    )
    assert (job.title, job.priority, job.labels) == ("Fix it", 1, ["bug"])
    assert (job.preferred_ai, job.needs_local_agent, job.complexity_hint) == (
        "claude",
        True,
        "high",
    )
    assert (job.session_id, job.prompt) == ("s1", "Do the thing.")
    assert (job.source, job.source_ref) == ("folder", "queue/fix.md")


def test_no_front_matter_is_a_job_with_defaults() -> None:
    job = parse("just run the tests\n")
    assert job.prompt == "just run the tests" and job.priority == 2
    assert job.preferred_ai is None and job.allow_delegation


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("  \n\n", "empty"),
        ("---\ntitle: x\n", "no closing"),
        ("---\ntitle: [x\n---\nbody", "not valid YAML"),
        ("---\n- a\n- b\n---\nbody", "mapping"),
        ("---\nprefered_ai: claude\n---\nbody", "did you mean 'preferred_ai'"),
        ("---\nbogus: 1\n---\nbody", "unknown field 'bogus'"),
        ("---\npriority: urgent\n---\nbody", "priority"),
        ("---\npriority: 12\n---\nbody", "priority"),
        ("---\ntimeout: -1\n---\nbody", "timeout"),
        ("---\ntitle: only a title\n---\n", "prompt, command or messages"),
        ("---\nprovider: a\nexecutor: b\n---\nbody", "alias"),
        ("---\nwebhook: ftp://example.com/hook\n---\nbody", "http"),
        ("---\nbase: main\n---\nbody", "base needs a repo"),
        ("---\nrun_at: tomorrow\n---\nbody", "run_at"),
        ("---\nrun_at: +10m\n---\nbody", "run_at"),
        ("---\nrun_at: 2030-01-01 09:00:00\n---\nbody", "run_at needs a time zone"),
        ("---\nrun_at: 2030-01-01T09:00:00\n---\nbody", "run_at needs a time zone"),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else v,
)
def test_bad_files_say_what_to_fix(text: str, needle: str) -> None:
    with pytest.raises(QueueFileError, match=needle) as info:
        parse(text)
    assert info.value.status == 422


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_a_queue_file_error(text: str) -> None:
    try:
        job = parse(text)
    except QueueFileError as exc:
        assert exc.message
    else:
        assert job.prompt or job.command


def test_footer_is_readable_and_parseable() -> None:
    from datetime import UTC, datetime, timedelta

    from corral.jobs import JobState
    from corral.models import Job
    from corral.queue_file import footer, rejection, result_of

    now = datetime.now(UTC)
    job = Job(
        id="j1",
        session_id="s1",
        turn=1,
        state=JobState.FAILED,
        provider="shell",
        priority=2,
        attempt=2,
        max_attempts=2,
        source="folder",
        epoch=3,
        created_at=now,
        started_at=now,
        finished_at=now + timedelta(seconds=1.5),
        available_at=now,
        updated_at=now,
        error="exit code 3",
        reason="exit_code",
        exit_code=3,
        result="line ```with fence```",
        cost=0.25,
        usage={"tokens": 7},
    )
    text = "---\ntitle: t\n---\nbody\n" + footer(job)
    assert "## corral: failed" in text and "- error: exit code 3 (exit_code)" in text
    assert "- duration: 1.5 s" in text and "- cost: $0.2500" in text
    assert text.count("```") == 2  # the output cannot close the fence early
    data = result_of(text)
    assert data is not None
    assert (data["job_id"], data["state"], data["attempts"], data["exit_code"]) == (
        "j1",
        "failed",
        2,
        3,
    )
    assert data["duration_s"] == 1.5 and data["usage"] == {"tokens": 7}
    assert result_of("no footer here") is None
    assert result_of("x" + rejection("bad yaml")) == {"state": "rejected", "error": "bad yaml"}


def test_repo_paths_are_resolved_from_the_queue_folder(tmp_path: Path) -> None:
    spec = parse("---\nrepo: ../app\nbase: main\n---\nfix it", base_dir=tmp_path / "queue")
    assert spec.repo == str((tmp_path / "app").resolve()) and spec.base == "main"
    assert parse("---\nrepo: /src/app\n---\nx").repo == "/src/app"
    url = "https://example.com/org/app.git"
    assert parse(f"---\nrepo: {url}\n---\nx").repo == url


def test_webhook_in_front_matter() -> None:
    spec = parse("---\nwebhook: https://example.com/hook\n---\nx")
    assert spec.webhook is not None and not isinstance(spec.webhook, str)
    assert spec.webhook.url == "https://example.com/hook" and spec.webhook.secret is None
    text = "---\nwebhook:\n  url: http://h/x\n  secret: 0123456789abcdef\n---\nx"
    spec = parse(text)
    assert spec.webhook is not None and not isinstance(spec.webhook, str)
    assert spec.webhook.secret == "0123456789abcdef"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2030-01-01T09:00:00Z", datetime(2030, 1, 1, 9, tzinfo=UTC)),
        ("2030-01-01 10:30:00+01:00", datetime(2030, 1, 1, 9, 30, tzinfo=UTC)),
        ("'2030-01-01T09:00:00-02:00'", datetime(2030, 1, 1, 11, tzinfo=UTC)),
    ],
    ids=["zulu", "yaml-timestamp-with-offset", "quoted-string"],
)
def test_run_at_in_front_matter_is_utc(value: str, expected: datetime) -> None:
    job = parse(f"---\nrun_at: {value}\n---\nLater.\n")
    assert job.run_at == expected
    assert job.run_at.tzinfo is UTC
