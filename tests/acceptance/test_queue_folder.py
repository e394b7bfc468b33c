"""The queue folder with a real `corral serve`: files in, results out."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.queue_file import result_of
from corral.testing import ServerProcess, start_server

from ._helpers import dashboard_page


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    queue = tmp_path / "queue"
    srv = start_server(
        tmp_path / "data", args=("--queue", str(queue)), env={"CORRAL_RUNNER__SLOTS": "8"}
    )
    try:
        yield srv, queue
    finally:
        srv.stop()


def _wait_for(pred, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def _drop(queue: Path, name: str, text: str | bytes) -> None:
    """Write elsewhere, then rename in: how a file should arrive."""
    tmp = queue / f".{name}.part"
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.rename(tmp, queue / name)


def _shell(body: str, front: str = "") -> str:
    """A queue file whose body runs in a shell: it says so (provider: shell)."""
    return f"---\nprovider: shell\n{front}---\n{body}"


def test_files_become_jobs_and_come_back_with_a_footer(
    folder: tuple[ServerProcess, Path],
) -> None:
    srv, queue = folder
    _drop(queue, "hello.md", "---\ntitle: greet\npriority: 1\nprovider: shell\n---\necho hello\n")
    _drop(queue, "plain.md", "---\ncommand: echo no prompt\n---\n")
    _drop(queue, "boom.md", _shell("exit 3\n"))
    done = _wait_for(
        lambda: (
            (queue / "done" / "hello.md").exists()
            and (queue / "done" / "plain.md").exists()
            and (queue / "failed" / "boom.md").exists()
        )
    )
    assert done
    text = (queue / "done" / "hello.md").read_text()
    assert text.startswith("---\ntitle: greet")  # the original is kept
    assert "## corral: done" in text and "hello" in text.split("## corral")[1]
    result = result_of(text)
    assert result is not None and result["state"] == "done" and result["attempts"] == 1
    failed = result_of((queue / "failed" / "boom.md").read_text())
    assert failed is not None and failed["state"] == "failed" and failed["exit_code"] == 3
    job = json.loads(srv.cli("jobs", "show", result["job_id"], "--json").stdout)
    assert job["source"] == "folder" and job["source_ref"].endswith("running/hello.md")
    assert job["title"] == "greet" and job["priority"] == 1
    assert list((queue / "running").iterdir()) == []
    assert not (queue / "hello.md").exists()
    # The dashboard's fleet page counts the folder's files where they are.
    page = dashboard_page(srv, "/ui/fleet")
    shown = page[page.index('id="queue-folder"') :].split("</section>")[0]
    assert str(queue) in shown
    counts = dict(re.findall(r"(waiting|running/|done/|failed/) <b>(\d+)</b>", shown))
    assert int(counts["done/"]) == len(list((queue / "done").glob("*.md"))) >= 2, counts
    assert int(counts["failed/"]) == len(list((queue / "failed").glob("*.md"))) >= 1, counts


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("typo.md", "---\nprefered_ai: claude\n---\nx\n", "did you mean 'preferred_ai'"),
        ("yaml.md", "---\ntitle: [oops\n---\nx\n", "not valid YAML"),
        ("type.md", "---\npriority: soon\n---\nx\n", "priority"),
        ("empty.md", "", "empty"),
        ("binary.md", b"\xff\xfe\x00bad", "not UTF-8"),
        ("when.md", "---\nrun_at: next tuesday\n---\nx\n", "run_at"),
    ],
    ids=["unknown-key", "bad-yaml", "wrong-type", "empty", "not-utf8", "bad-run-at"],
)
def test_bad_files_go_to_failed_with_the_reason(
    folder: tuple[ServerProcess, Path], name: str, content: str | bytes, needle: str
) -> None:
    _, queue = folder
    _drop(queue, name, content)
    target = _wait_for(lambda: (queue / "failed" / name).exists() and queue / "failed" / name)
    data = target.read_bytes()
    assert data.startswith(content if isinstance(content, bytes) else content.encode())
    result = result_of(data.decode("utf-8", "replace"))
    assert result is not None and result["state"] == "rejected" and needle in result["error"]
    # The watcher lives on: the next good file still runs.
    _drop(queue, "after.md", _shell("echo still alive\n"))
    assert _wait_for(lambda: (queue / "done" / "after.md").exists())


def test_prose_never_runs_in_a_shell(folder: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    """A file with no routing is a prompt: with no default_provider it goes to
    failed/ saying how to configure one; a misspelt provider is named, not
    replaced by the shell. Neither reaches /bin/sh."""
    srv, queue = folder
    marker = tmp_path / "ran-in-a-shell"
    _drop(queue, "prose.md", f"Tidy the README, then\ntouch {marker}\n")
    _drop(queue, "claud.md", f"---\nprovider: claud\n---\ntouch {marker}\n")
    for name, needles in (
        ("prose.md", ["no default_provider is configured", 'set default_provider = "NAME"']),
        ("claud.md", ["provider 'claud' is not configured; the enabled providers are: shell"]),
    ):
        path = queue / "failed" / name
        target = _wait_for(lambda path=path: path.exists() and path)
        result = result_of(target.read_text())
        assert result is not None and result["state"] == "rejected", result
        assert all(n in result["error"] for n in needles), result["error"]
    assert json.loads(srv.cli("jobs", "ls", "--json").stdout) == []
    assert not marker.exists() and list((queue / "running").iterdir()) == []


def test_files_being_written_are_left_alone(folder: tuple[ServerProcess, Path]) -> None:
    srv, queue = folder
    for name in (".hidden.md", "draft.md.swp", "notes.md~", "partial.tmp"):
        (queue / name).write_text("echo should not run\n")
    time.sleep(1.5)
    assert sorted(p.name for p in queue.iterdir() if p.is_file()) == [
        ".hidden.md",
        "draft.md.swp",
        "notes.md~",
        "partial.tmp",
    ]
    assert json.loads(srv.cli("jobs", "ls", "--json").stdout) == []


def test_pickup_is_fast_and_a_burst_drains_in_priority_order(
    folder: tuple[ServerProcess, Path],
) -> None:
    srv, queue = folder
    start = time.monotonic()
    _drop(queue, "first.md", _shell("true\n"))
    _wait_for(
        lambda: (queue / "running" / "first.md").exists() or (queue / "done" / "first.md").exists()
    )
    assert time.monotonic() - start < 1.0  # picked up within a second
    # Pause so nothing runs while the burst is taken, then check lease order.
    assert srv.cli("pause").returncode == 0
    burst = 1000
    for i in range(burst):
        priority = [3, 0, 2][i % 3]
        _drop(queue, f"burst-{i:04d}.md", _shell("true\n", f"priority: {priority}\n"))
    _wait_for(lambda: len(list((queue / "running").glob("burst-*.md"))) == burst, timeout=60)
    assert not list(queue.glob("burst-*.md"))  # all taken
    assert srv.cli("resume").returncode == 0
    _wait_for(lambda: len(list((queue / "done").glob("burst-*.md"))) == burst, timeout=120)
    with srv.http() as http:
        jobs: list[dict[str, object]] = []
        before = None
        while True:  # every page
            params: dict[str, object] = {"limit": 500, **({"before": before} if before else {})}
            page = http.get("/jobs", params=params).json()
            jobs += page["jobs"]
            before = page["next"]
            if before is None:
                break
    mine = [j for j in jobs if "burst-" in str(j["source_ref"])]
    assert len(mine) == burst and {j["state"] for j in mine} == {"done"}
    # One lease hands out up to 8 jobs at one timestamp, most urgent first.
    by_start = sorted(mine, key=lambda j: (str(j["assigned_at"]), int(j["priority"])))  # type: ignore[call-overload]
    priorities = [j["priority"] for j in by_start]
    assert priorities == sorted(priorities)  # every P0 leased before any P2, P2 before P3


def test_restart_reconciles_running_files(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    srv = start_server(tmp_path / "data", args=("--queue", str(queue)))
    try:
        _drop(queue, "long.md", _shell("sleep 2; echo survived\n", "max_attempts: 2\n"))
        _wait_for(lambda: (queue / "running" / "long.md").exists())
        time.sleep(0.5)
        srv.kill()
    finally:
        srv.stop()
    again = start_server(tmp_path / "data", args=("--queue", str(queue)))
    try:
        target = _wait_for(
            lambda: (queue / "done" / "long.md").exists() and queue / "done" / "long.md", timeout=40
        )
        result = result_of(target.read_text())
        assert result is not None and result["state"] == "done"
        jobs = json.loads(again.cli("jobs", "ls", "--json").stdout)
        assert len(jobs) == 1  # the same job went on; nothing was submitted twice
    finally:
        again.stop()


def test_kill_9_mid_burst_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    env = {"CORRAL_RUNNER__SLOTS": "4"}
    srv = start_server(tmp_path / "data", args=("--queue", str(queue)), env=env)
    try:
        for i in range(80):
            _drop(queue, f"b-{i:03d}.md", _shell(f"sleep 0.0{i % 10}\n", "max_attempts: 3\n"))
        _wait_for(lambda: len(list((queue / "done").glob("b-*.md"))) >= 10)
        srv.kill()
    finally:
        srv.stop()
    again = start_server(tmp_path / "data", args=("--queue", str(queue)), env=env)
    try:
        _wait_for(lambda: len(list((queue / "done").glob("b-*.md"))) == 80, timeout=90)
        names = sorted(p.name for p in (queue / "done").iterdir())
        assert names == [f"b-{i:03d}.md" for i in range(80)]  # no b-001-2.md: no double finish
        assert list((queue / "running").iterdir()) == [] and not list(queue.glob("b-*.md"))
        with again.http() as http:
            jobs = http.get("/jobs", params={"limit": 500}).json()["jobs"]
        assert len(jobs) == 80 and {j["state"] for j in jobs} == {"done"}
        assert len({j["source_ref"] for j in jobs}) == 80
    finally:
        again.stop()


def test_two_replicas_share_one_folder_and_finish_each_file_once(
    tmp_path: Path, pg_url: str
) -> None:
    queue = tmp_path / "queue"
    args = ("--queue", str(queue))
    a = start_server(tmp_path / "a", database_url=pg_url, args=args)
    b = start_server(tmp_path / "b", database_url=pg_url, args=args)
    try:
        for i in range(40):
            _drop(queue, f"r-{i:02d}.md", _shell(f"sleep 0.0{i % 5}; echo {i}\n"))
        _wait_for(lambda: len(list((queue / "done").glob("r-*.md"))) == 40, timeout=60)
        # One replica leads the folder; the other stands by. No file is finished twice.
        time.sleep(0.5)
        names = sorted(p.name for p in (queue / "done").iterdir())
        assert names == [f"r-{i:02d}.md" for i in range(40)]
        with a.http() as http:
            jobs = http.get("/jobs", params={"limit": 100}).json()["jobs"]
        assert len(jobs) == 40
        # The leader goes away: the other replica takes the folder over.
        a.stop()
        _drop(queue, "after.md", _shell("echo taken over\n"))
        _wait_for(lambda: (queue / "done" / "after.md").exists(), timeout=30)
    finally:
        a.stop()
        b.stop()


def test_a_file_written_in_place_is_taken_only_once_complete(
    folder: tuple[ServerProcess, Path],
) -> None:
    _, queue = folder
    with (queue / "slow.md").open("w") as f:
        f.write(_shell("echo part-one"))
        f.flush()
        time.sleep(0.12)  # shorter than the settle time, longer than the watcher's debounce
        f.write("; echo part-two\n")
    target = _wait_for(lambda: (queue / "done" / "slow.md").exists() and queue / "done" / "slow.md")
    result = target.read_text()
    assert "part-one" in result and "part-two" in result.split("## corral")[1]


def test_a_slowly_written_file_is_taken_only_once_its_writer_is_done(
    folder: tuple[ServerProcess, Path],
) -> None:
    """Pauses longer than the settle time (0.2 s) between the writes: the file
    is not taken while its writer still has it open."""
    srv, queue = folder
    chunks = [f"line {i} of a slowly written prompt\n" for i in range(5)]
    header = "---\ncommand: echo slow\ntitle: slow\n---\n"
    opened, done = threading.Event(), threading.Event()

    def write() -> None:
        with (queue / "slowly.md").open("w") as f:
            opened.set()
            f.write(header)
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.5)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    opened.wait(5)
    try:
        while True:
            there = (queue / "slowly.md").exists()
            jobs = json.loads(srv.cli("jobs", "ls", "--json").stdout)
            if done.is_set():  # (checked after looking: what was seen, was seen mid-write)
                break
            assert there and jobs == [], "taken while still being written"
            time.sleep(0.2)
    finally:
        writer.join()
    (job,) = _wait_for(lambda: json.loads(srv.cli("jobs", "ls", "--json").stdout))
    assert job["title"] == "slow"
    assert job["prompt"] == "".join(chunks).strip()


def test_links_and_other_non_regular_files_go_to_failed_unread(
    folder: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    srv, queue = folder
    outside = tmp_path / "outside.txt"
    outside.write_text("echo SECRET-CONTENT-OUTSIDE\n")
    (queue / "link.md").symlink_to(outside)
    os.mkfifo(queue / "pipe.md")  # reading it would block the watcher forever
    link = _wait_for(
        lambda: (queue / "failed" / "link.md").exists() and queue / "failed" / "link.md"
    )
    pipe = _wait_for(
        lambda: (queue / "failed" / "pipe.md").exists() and queue / "failed" / "pipe.md"
    )
    for path, needle in ((link, "symbolic link"), (pipe, "not a regular file")):
        assert not path.is_symlink()
        text = path.read_text()
        assert "SECRET-CONTENT" not in text
        result = result_of(text)
        assert result is not None and result["state"] == "rejected", text
        assert needle in result["error"]
    assert not (queue / "link.md").exists() and not (queue / "pipe.md").exists()
    assert outside.read_text() == "echo SECRET-CONTENT-OUTSIDE\n"  # left alone
    assert not any("SECRET" in p.read_text() for p in (queue / "done").glob("*"))
    assert json.loads(srv.cli("jobs", "ls", "--json").stdout) == []
    # The watcher lives on.
    _drop(queue, "after.md", "---\ncommand: echo still alive\n---\n")
    assert _wait_for(lambda: (queue / "done" / "after.md").exists())
