"""A runner whose network is cut silently (no FIN, no RST) recovers within
seconds of the link's return, and no job runs twice.

The runner runs in a network namespace of its own, joined to the server's
through a bridge in a third one; the cut stops the bridge, so neither side hears
of it (no link goes down, no local error cuts TCP's retransmission backoff
short): the server's connection stays established and a lease it answers
meanwhile goes into the cut. Needs root and `ip netns` (skipped without, except
on CI)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.auth import Role
from corral.testing import ServerProcess, free_port, on_ci, start_server

from ._helpers import clean_env, stop_process, submit, wait_job

LEASE_TTL = 12.0  # lease_confirm and poll_wait: 4 s
CUT_SECONDS = 7.0  # under LEASE_TTL: the jobs must not be re-run
RECOVERY_BOUND = 4.0  # seconds from the link's return to the last job's start
JOBS = 3


def _ip(*args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(("netns", "exec", ns, "ip") if ns else ()), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10)


def _unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "ss"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command (iproute2)"
    probe = _ip("netns", "list")
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


@dataclass
class Netns:
    """The runner's namespace NAME, joined to this one through a bridge in a
    namespace NAMEm (a switch in the middle): NAMEh here -- NAMEa, br0,
    NAMEb there -- NAMEr in the runner's."""

    name: str
    host: str  # the address of this side
    peer: str  # the runner's address

    @property
    def middle(self) -> str:
        return self.name + "m"

    def cut(self) -> None:
        """Stop the switch in the middle: every interface stays up, with its
        carrier; what is sent is lost on the way, no FIN, no RST, no ICMP."""
        res = _ip("link", "set", "br0", "down", ns=self.middle)
        assert res.returncode == 0, res.stderr

    def restore(self) -> None:
        res = _ip("link", "set", "br0", "up", ns=self.middle)
        assert res.returncode == 0, res.stderr


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of 10.0.0.0/8 on no interface here."""
    used = _ip("-o", "-4", "addr", "show").stdout + _ip("-4", "route", "show").stdout
    for _ in range(100):
        net = ipaddress.IPv4Network(
            f"10.{random.randint(64, 254)}.{random.randint(0, 255)}.{4 * random.randint(0, 63)}/30"
        )
        prefix = str(net.network_address).rsplit(".", 1)[0] + "."
        if prefix not in used:
            return net
    raise AssertionError("no free private /30 found")


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    """The runner's namespace and the switch's, with unique names; only what
    this made is removed."""
    reason = _unavailable()
    if reason is not None:
        if on_ci():
            pytest.fail(f"the network-cut test is mandatory on CI: {reason}")
        pytest.skip(reason)
    name = f"crl{secrets.token_hex(3)}"  # an interface name has 15 characters at most
    mid = name + "m"
    net = _free_subnet()
    host, peer = (str(a) for a in net.hosts())
    made: list[str] = []
    try:
        for ns in (name, mid):
            res = _ip("netns", "add", ns)
            assert res.returncode == 0, res.stderr
            made.append(ns)
        # Made inside the namespaces (but NAMEh): deleting them deletes the pairs.
        steps: list[tuple[tuple[str, ...], str | None]] = [
            (("link", "add", name + "h", "type", "veth", "peer", "name", name + "a"), None),
            (("link", "set", name + "a", "netns", mid), None),
            (("link", "add", "br0", "type", "bridge"), mid),
            (("link", "add", name + "b", "type", "veth", "peer", "name", name + "r"), mid),
            (("link", "set", name + "r", "netns", name), mid),
            (("link", "set", name + "a", "master", "br0"), mid),
            (("link", "set", name + "b", "master", "br0"), mid),
            (("link", "set", name + "a", "up"), mid),
            (("link", "set", name + "b", "up"), mid),
            (("link", "set", "br0", "up"), mid),
            (("addr", "add", f"{host}/30", "dev", name + "h"), None),
            (("link", "set", name + "h", "up"), None),
            (("addr", "add", f"{peer}/30", "dev", name + "r"), name),
            (("link", "set", name + "r", "up"), name),
            (("link", "set", "lo", "up"), name),
        ]
        for argv, ns in steps:
            res = _ip(*argv, ns=ns)
            if argv[:3] == ("link", "add", name + "h"):
                made.insert(0, name + "h")
            if res.returncode != 0 and argv[-1] == "bridge" and not on_ci():
                pytest.skip(f"no bridges here: {res.stderr.strip()}")
            assert res.returncode == 0, (argv, res.stderr)
        yield Netns(name, host, peer)
    finally:
        for what in made:
            if what == name + "h":
                _ip("link", "del", what)
            else:
                _ip("netns", "del", what)


def _established(port: int) -> list[str]:
    """The server's established connections (from its side)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


async def _keys(data: Path) -> tuple[str, str]:
    """An admin key and a runner key, made in this process (`corral serve` off
    loopback wants a key made beforehand; a CLI start costs seconds here)."""
    from corral.config import Settings
    from corral.server.build import open_store

    store = await open_store(Settings(data_dir=data))
    try:
        admin = (await store.keys.create(name="admin", role=Role.ADMIN))[1]
        runner = (await store.keys.create(name="runner", role=Role.RUNNER))[1]
    finally:
        await store.close()
    return admin, runner


def test_runner_recovers_quickly_from_a_silent_network_cut(tmp_path: Path) -> None:
    with netns() as ns:
        data = tmp_path / "srv"
        data.mkdir()
        admin, key = asyncio.run(_keys(data))
        (data / "admin.key").write_text(admin)
        port = free_port()
        # Started first: it registers once the server answers.
        log = tmp_path / "runner.log"
        with log.open("ab") as out:
            runner = subprocess.Popen(
                [
                    *("ip", "netns", "exec", ns.name),
                    *(sys.executable, "-m", "corral", "runner", "--name", "netcut"),
                    *("--server", f"http://{ns.host}:{port}", "--token", key),
                    *("--workdir", str(tmp_path / "runner"), "--slots", "4"),
                ],
                env=clean_env(CORRAL_RUNNER__SANDBOX="none"),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        srv: ServerProcess | None = None
        try:
            env = {
                "CORRAL_RUNNER__EMBEDDED": "false",
                "CORRAL_LEASE_TTL": str(LEASE_TTL),
                "CORRAL_HEARTBEAT_INTERVAL": "1",
                "CORRAL_WATCHDOG_INTERVAL": "0.25",
            }
            srv = start_server(data, host=ns.host, port=port, env=env)
            served_at = time.monotonic()
            runs = tmp_path / "runs.txt"
            runs.touch()

            def job(tag: str) -> str:
                return f'echo "{tag} $(date +%s.%N)" >> {runs}; echo {tag}'

            with srv.http() as http:
                warm = submit(http, job("warm-up"))
                assert wait_job(http, warm, timeout=30)["state"] == "done", log.read_text()
                # The watchdog's start-up grace (one lease_ttl) is over before
                # the link returns: a job answered into the cut is queued again.
                time.sleep(max(0.0, served_at + LEASE_TTL - CUT_SECONDS - time.monotonic()))
                time.sleep(0.5)  # the runner waits in its next lease request
                before = _established(srv.port)
                assert any(ns.peer in line for line in before), before
                # The runner's connections probe a silent peer (runner/link.py).
                timers = subprocess.run(
                    [*("ip", "netns", "exec", ns.name), *("ss", "-Htno", "state", "established")],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                assert "timer:(keepalive" in timers, timers

                ns.cut()
                cut_at = time.monotonic()
                # Answered into the cut by the lease request waiting there.
                ids = [submit(http, job(f"cut-{i}")) for i in range(JOBS)]
                time.sleep(0.3)
                # Silent: the server's connections from the runner are still up.
                after = _established(srv.port)
                assert any(ns.peer in line for line in after), (before, after)
                time.sleep(max(0.0, cut_at + CUT_SECONDS - time.monotonic()))
                ns.restore()
                restored = time.time()

                jobs = [wait_job(http, job_id, timeout=30) for job_id in ids]
                assert [j["state"] for j in jobs] == ["done"] * JOBS, (jobs, log.read_text())
            lines = [line.split() for line in runs.read_text().splitlines()]
            tags = [tag for tag, _ in lines]
            # Every job submitted in the cut started within seconds of its end.
            last = max(float(at) for tag, at in lines if tag != "warm-up")
            recovery = last - restored
            lost = sum(j["infra_retries"] for j in jobs)  # leased into the cut, queued again
            print(
                f"the last job started {recovery:.2f}s after the link returned; "
                f"{lost} lease(s) lost in the cut; {len(tags) - 1 - JOBS} job(s) run twice"
            )
            # Not one job ran twice (none was run again after a lease lost on the way).
            assert sorted(tags) == sorted(["warm-up", *(f"cut-{i}" for i in range(JOBS))]), lines
            assert 0 < recovery < RECOVERY_BOUND, (recovery, log.read_text())
        finally:
            stop_process(runner)  # `ip netns exec` execs the runner: its pid
            if srv is not None:
                srv.stop()
