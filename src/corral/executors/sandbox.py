"""What a job (or an agent daemon) the runner starts can see and touch.

**Files.** With ``bwrap`` (bubblewrap, Linux) a process runs in new mount,
PID, IPC and UTS namespaces with every capability dropped:

- the host's file system read-only (``--ro-bind / /``), a fresh ``/dev``, a
  ``/proc`` of its own PID namespace (the runner's and server's processes,
  their environments and command lines are not there), a private ``/tmp``;
- hidden, with an empty directory or an unreadable empty file mounted over:
  the runner's data dir and workdir (keys, database, runner state, other
  sessions' workspaces), the configuration file, the database file, the
  queue folder, the host's well-known server sockets, and any path of
  ``[runner] sandbox_hide``;
- the installation of the program it runs, read-only, when that lies under
  ``/tmp`` (a checkout or virtualenv there would be hidden by the private
  ``/tmp``; see ``installation``);
- then, in order, the job's own paths bound back: its workspace and its
  provider's state dir writable (HOME, the agent's config), and for a git
  worktree what a commit needs (see ``Workspaces.mounts``);
- the network shared (agents call their APIs) unless the provider says
  ``network = false`` (then only a loopback of its own).

``--die-with-parent``: the sandbox dies with the runner. Killing bwrap's
child, PID 1 of the namespace, kills everything inside: no process of a job
outlives it, whatever sessions or process groups it made. No
``--new-session``: the runner starts the sandbox in a session of its own
(no controlling terminal to inject into), and its process-group signals
must reach the job's processes. ``--cap-drop ALL`` matters when the runner
is root: with capabilities, root in the sandbox could unmount what hides
the secrets.

**Environment.** ``job_environment``: an allowlist of the runner's variables
(``OTEL_*`` among them) plus what the caller adds; nothing else of the runner's (``CORRAL_*``
settings, other providers' keys) reaches a job."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corral.errors import ConfigError

log = logging.getLogger(__name__)

Mode = Literal["auto", "bwrap", "none"]

# Variables of the runner's environment a job may see; everything else is dropped.
ENV_ALLOW = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME"}
    # How this host reaches the network: agents need it to call their APIs.
    | {"SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"}
    | {"CURL_CA_BUNDLE", "GIT_SSL_CAINFO"}
    | {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}
    | {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
)
# OTEL_*: the runner's OpenTelemetry settings, for agent CLIs that export
# traces or metrics themselves (corral.tracing); not the exporter's headers
# (OTEL_EXPORTER_OTLP_HEADERS and the per-signal ones carry credentials).
ENV_ALLOW_PREFIXES = ("LC_", "OTEL_")
ENV_DENY_SUFFIXES = ("_HEADERS",)

# Unix sockets of services a server host commonly runs; hidden when present
# (a read-only bind does not stop connect() on a socket).
HOST_SOCKETS = (
    "/run/postgresql",
    "/var/run/postgresql",
    "/run/mysqld",
    "/var/run/mysqld",
    "/run/redis",
    "/var/run/redis",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
    "/run/podman",
    "/run/user",
)


def job_environment(
    base: Mapping[str, str], *, home: Path, extra: Mapping[str, str] = {}
) -> dict[str, str]:
    """A job's environment: the allowlisted variables of ``base`` (the
    runner's), ``HOME``, then ``extra`` (the job's ids, its provider's ``env``
    and credential, an agent's own settings)."""
    env = {
        k: v
        for k, v in base.items()
        if (k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES))
        and not k.endswith(ENV_DENY_SUFFIXES)
    }
    env["HOME"] = str(home)
    env.update(extra)
    return env


def found(command: str, env: Mapping[str, str], cwd: Path) -> bool:
    """Whether ``command`` names an executable as exec would find it in
    ``cwd`` with ``env``'s PATH (inside a sandbox a missing program is only
    bwrap's exit status: look first, to say what is missing)."""
    if "/" in command:
        return os.access(cwd / command, os.X_OK)
    return shutil.which(command, path=env.get("PATH", os.defpath)) is not None


@dataclass(frozen=True)
class Mount:
    """A path bound into the sandbox at the same place, writable or not."""

    path: Path
    writable: bool = True


def rw(*paths: Path) -> list[Mount]:
    return [Mount(p, True) for p in paths]


def ro(*paths: Path) -> list[Mount]:
    return [Mount(p, False) for p in paths]


@dataclass(frozen=True)
class Sandbox:
    """The runner's sandbox: ``kind`` is ``bwrap`` or ``none``; ``hidden`` the
    paths no job sees; ``why`` says why there is none (for the warnings)."""

    kind: Literal["bwrap", "none"] = "none"
    mode: Mode = "none"  # what was asked for
    bwrap: str | None = None
    hidden: tuple[Path, ...] = ()
    void: Path | None = None  # an empty file of mode 000, mounted over hidden files
    why: str | None = None

    def confine(self, mounts: Sequence[Mount] = (), *, network: bool = True) -> Confine:
        """The sandbox of one job: ``mounts`` (its workspace, ...) bound back."""
        return Confine(self, tuple(mounts), network)

    def describe(self) -> str:
        """One line for logs and start-up output."""
        if self.kind == "bwrap":
            return f"bwrap ({self.bwrap})"
        if self.mode == "none":
            return "none (runner.sandbox = none: jobs see all that this runner can)"
        return f"none: {self.why}"

    def argv(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        mounts: Iterable[Mount],
        network: bool,
        programs: Sequence[str] | None = None,
    ) -> list[str]:
        """``command`` wrapped in bwrap (or as given without a sandbox).
        ``programs``: the configured command the argv starts with (trusted,
        unlike the job's own arguments), whose installations are bound back
        when they lie under /tmp; default: the argv's first word."""
        if self.kind == "none" or self.bwrap is None:
            return list(command)
        binds = _normalised(mounts)
        # Strings, not pathlib, on this per-start path (issue #18); sorted,
        # a directory comes before what is inside it.
        hidden = resolved(self.hidden)
        args = [
            self.bwrap,
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--cap-drop",
            "ALL",
        ]
        if not network:
            args.append("--unshare-net")
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        for path in _installations(programs if programs is not None else command[:1], cwd):
            args += ["--ro-bind", str(path), str(path)]
        args += self._hide(hidden, under=None)
        for m in binds:
            args += ["--bind" if m.writable else "--ro-bind", str(m.path), str(m.path)]
        # A secret inside a path bound back (a config file in the job's repo) stays hidden.
        args += self._hide(hidden, under=[m.path for m in binds])
        args += ["--chdir", str(cwd), "--", *command]
        return args

    def _hide(self, hidden: list[str], *, under: list[Path] | None) -> list[str]:
        args: list[str] = []
        done: list[str] = []
        # Absolute, resolved paths compared as strings: Path.is_relative_to
        # over every pair was ~1.5 % of the server's CPU per job (issue #18).
        bases = None if under is None else [str(b) for b in under]
        for text in hidden:
            if bases is not None and not any(_within(text, b) for b in bases):
                continue
            if any(_within(text, d) for d in done):
                continue  # inside a directory already hidden
            if os.path.isdir(text):
                args += ["--tmpfs", text]
                done.append(text)
            elif self.void is not None:
                args += ["--ro-bind", str(self.void), text]
        return args


def resolved(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """``sorted({os.path.realpath(p) for p in paths if os.path.lexists(p)})``
    for absolute paths, read afresh at each call (a secret's symlink may
    change while the runner runs) with each folder resolved once: most hidden
    paths share a few (the data dir, ``/run``), and ``realpath`` walking every
    component of each was ~5 % of the server's time per job (issue #18)."""
    folders: dict[str, str] = {}
    out: set[str] = set()
    for p in paths:
        text = os.fspath(p)
        # Plain string work for a normalised absolute path (the usual case).
        if (
            text[:1] != "/"
            or text.endswith(("/", "/.", "/.."))
            or "//" in text
            or "/./" in text
            or "/../" in text
        ):
            if os.path.lexists(text):
                out.add(os.path.realpath(text))
            continue
        head, _, name = text.rpartition("/")
        real, there = real_under(_folder(head or "/", folders), name)
        if there:
            out.add(real)
    return sorted(out)


def _folder(path: str, known: dict[str, str]) -> str:
    """``os.path.realpath(path)`` (absolute, normalised), from the folders
    resolved so far; a component that is not there is kept as it is, as
    ``realpath`` keeps it."""
    real = known.get(path)
    if real is None:
        if path == "/":
            real = path
        else:
            head, _, name = path.rpartition("/")
            real = known[path] = real_under(_folder(head or "/", known), name)[0]
    return real


def real_under(folder: str, name: str) -> tuple[str, bool]:
    """``os.path.realpath(folder/name)`` for a resolved ``folder`` and one
    plain ``name``, and whether ``folder/name`` is there (as
    ``os.path.lexists`` says): ``realpath(folder)/name`` unless ``name`` is
    a symbolic link, which is then resolved in full."""
    path = f"{folder}/{name}" if folder != "/" else f"/{name}"
    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):
        return path, False
    return (os.path.realpath(path) if stat.S_ISLNK(mode) else path), True


def _within(path: str, base: str) -> bool:
    """``Path(path).is_relative_to(base)`` for absolute, normalised paths."""
    return path == base or path.startswith(base.rstrip("/") + "/")


@dataclass(frozen=True)
class Confine:
    """One job's sandbox: call it with an argv to get the argv to run."""

    sandbox: Sandbox = field(default_factory=Sandbox)
    mounts: tuple[Mount, ...] = ()
    network: bool = True

    @property
    def kind(self) -> str:
        return self.sandbox.kind

    def __call__(
        self,
        command: Sequence[str],
        *,
        cwd: Path,
        writable: Sequence[Path] = (),
        read_only: Sequence[Path] = (),
        programs: Sequence[str] | None = None,
    ) -> list[str]:
        """``command`` to run in ``cwd``, with ``writable`` (e.g. a TMPDIR)
        writable besides this job's mounts, and ``read_only`` not;
        ``programs`` as ``Sandbox.argv`` takes it."""
        mounts = [*self.mounts, *rw(*writable), *ro(*read_only)]
        return self.sandbox.argv(
            command, cwd=cwd, mounts=mounts, network=self.network, programs=programs
        )


def _installations(programs: Sequence[str], cwd: Path) -> list[Path]:
    """The installations of a configured command: its program (looked up on
    PATH) and any other word of it that is a path (``node /tmp/x/cli.js``, a
    wrapper ``sh -c '...' /tmp/x/claude``)."""
    roots: dict[Path, None] = {}
    for n, word in enumerate(programs):
        if n == 0 or "/" in word:
            roots.update(dict.fromkeys(installation(word, cwd=cwd)))
    return sorted(roots)


def installation(program: str, *, cwd: Path) -> list[Path]:
    """What the sandbox must bind back, read-only, for ``program`` to run
    when it lives under ``/tmp`` (which the sandbox replaces with a private
    one): for the program as named and as its links resolve, the
    installation holding it -- the outermost ``node_modules`` (a Node CLI
    needs its package and their dependencies), else a virtualenv (the
    directory with ``pyvenv.cfg``), else the program's own directory.
    Nothing for a program elsewhere: the host is bound read-only already."""
    found = program if "/" in program else shutil.which(program)
    if found is None:
        return []
    # Strings first: a program outside /tmp (nearly every one) costs two
    # calls, not pathlib's work, at every job's start (issue #18).
    text = os.path.abspath(os.path.join(cwd, found))
    if not os.path.exists(text):
        return []
    real_tmp = _real_tmp()
    under = [
        Path(p)
        for p in (text, os.path.realpath(text))
        if _within(p, real_tmp) or _within(p, "/tmp")
    ]
    tmp = Path(real_tmp)
    roots: dict[Path, None] = {}
    for path in under:
        root = path.parent
        modules = [a for a in path.parents if a.name == "node_modules"]
        venvs = [a for a in path.parents if (a / "pyvenv.cfg").is_file()]
        if modules:
            root = modules[-1]
        elif venvs:
            root = venvs[0]
        if root not in (Path("/tmp"), tmp):
            roots.setdefault(root, None)
    return sorted(roots)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@functools.cache
def _real_tmp() -> str:
    """Where /tmp is (read once: a host does not move its /tmp under a runner)."""
    return os.path.realpath("/tmp")


def _normalised(mounts: Iterable[Mount]) -> list[Mount]:
    """Existing paths, resolved (bwrap binds what a path points to), in the
    given order: a later mount inside an earlier one overrides it."""
    seen: dict[tuple[Path, bool], None] = {}
    for m in mounts:
        if os.path.exists(m.path):
            seen.setdefault((_real(m.path), m.writable), None)
    return [Mount(p, w) for p, w in seen]


def probe(bwrap: str) -> str | None:
    """None if ``bwrap`` can make a sandbox here, else why not."""
    try:
        done = subprocess.run(
            [
                bwrap,
                "--die-with-parent",
                "--unshare-pid",
                "--cap-drop",
                "ALL",
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--proc",
                "/proc",
                "--tmpfs",
                "/tmp",
                "--",
                "true",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{bwrap} cannot run: {exc}"
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        return f"{bwrap} cannot make a sandbox here ({detail}); are user namespaces enabled?"
    return None


def make(mode: Mode, *, hidden: Iterable[Path], state_dir: Path) -> Sandbox:
    """The sandbox ``mode`` asks for on this host. ``bwrap`` without a working
    bwrap is a configuration error; ``auto`` then runs jobs without one (and
    says why: the caller warns loudly)."""
    if mode == "none":
        return Sandbox("none", "none", why="sandbox = none")
    path = shutil.which("bwrap")
    why = "bwrap is not installed (Debian: apt-get install bubblewrap)" if path is None else None
    if path is not None:
        why = probe(path)
    if why is not None:
        if mode == "bwrap":
            raise ConfigError(f"runner sandbox = 'bwrap', but {why}")
        return Sandbox("none", mode, why=why)
    assert path is not None
    state_dir.mkdir(parents=True, exist_ok=True)
    void = state_dir / "void"
    if not void.exists():
        void.touch()
    void.chmod(0)
    return Sandbox("bwrap", mode, bwrap=path, hidden=tuple(_hidden_set(hidden)), void=void)


def _hidden_set(paths: Iterable[Path]) -> list[Path]:
    extra = [Path(p) for p in HOST_SOCKETS]
    out: dict[Path, None] = {}
    for p in [*paths, *extra]:
        out.setdefault(Path(os.path.abspath(os.path.expanduser(p))), None)
    return list(out)


WARNING = (
    "JOBS ARE NOT SANDBOXED ({why}): a job can read this runner's keys, database "
    "and configuration. Install bubblewrap, or set [runner] sandbox = 'none' to "
    "accept this."
)


def warn_unsandboxed(sandbox: Sandbox) -> str | None:
    """The loud warning for ``auto`` without bwrap (None when sandboxed or when
    ``none`` was chosen)."""
    if sandbox.kind == "bwrap" or sandbox.mode == "none":
        return None
    return WARNING.format(why=sandbox.why)
