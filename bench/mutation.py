"""Mutation testing of the pure core, the lease/fencing store code and journal
recovery, with mutmut (pinned in the dev extra): how many small changes to the
code (a flipped comparison, a dropped keyword, an off-by-one) make a test fail.

    python bench/mutation.py                 # every target, one after the other
    python bench/mutation.py jobs routing    # some of them
    python bench/mutation.py --list-survivors fencing   # and name what survived

Each target runs in its own scratch directory (``.mutation/TARGET/``, not
committed): mutmut reads its settings from the ``pyproject.toml`` in the
directory it runs in, so the script writes one there with the project's pytest
settings and the target's ``[tool.mutmut]`` (files to mutate, the test files
that exercise them), links ``src`` and ``tests``, and runs ``mutmut run`` with
one worker process (``--workers 2`` for two). Each mutant runs only the tests
that reached the mutated function when the selected tests ran unmutated (the
mutmut stats), stops at the first failure, and has a wall-clock timeout of
``(its tests' time + 2 s) × 5`` (mutmut's timeout_constant/timeout_multiplier),
with pytest's own per-test timeout cut to 60 s.

The store targets run on SQLite only (``-k "not postgres"``): the same store
code runs on both databases, and a PostgreSQL case costs a fresh database per
test (~2-3 s of setup on the 2-core machine), which would triple the run.

The score is (killed + timeout) / mutants, in percent, as mutmut's own badge
counts it: a mutant that makes a test hang (a lease loop that never ends) is
caught by pytest's per-test timeout on a real run. "no tests" (no selected
test reaches the function) counts as not killed.

Prints one table (module, mutants, killed, survived, timeout, no tests,
score) and, with ``--list-survivors``, every surviving mutant's name; see
one with ``cd .mutation/TARGET && ../../.venv/bin/mutmut show NAME``. A run
starts afresh each time (the scratch directory is deleted first) unless
``--keep`` is given, which reuses mutmut's results for unchanged functions.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / ".mutation"


@dataclass(frozen=True)
class Target:
    name: str
    files: tuple[str, ...]  # paths under src/ to mutate
    tests: tuple[str, ...]  # pytest arguments selecting the tests
    # mutmut mutant-name globs (module.x_function__mutmut_*): only these
    # functions of the files are counted and run; empty: every function.
    functions: tuple[str, ...] = ()


def _fns(module: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{module}.x_{name}__mutmut_*" for name in names)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("jobs", ("src/corral/jobs.py",), ("tests/unit/test_jobs.py",)),
        Target("routing", ("src/corral/routing.py",), ("tests/unit/test_routing.py",)),
        Target(
            "fencing",
            (
                "src/corral/store/jobs/state.py",
                "src/corral/store/jobs/dispatch.py",
                "src/corral/store/jobs/lifecycle.py",
            ),
            (
                "tests/integration/test_fencing.py",
                "tests/integration/test_store_jobs.py",
                "tests/integration/test_store_runners.py",
                "tests/integration/test_store_affinity.py",
                "tests/integration/test_store_failures.py",
                # SQLite only; a quota pause that waits out 3 s of real time is
                # left to the test suite
                "-k",
                "not postgres and not ends_by_itself",
            ),
            functions=(
                # state.py: the compare-and-set core and the epoch checks
                *_fns("corral.store.jobs.state", "locked", "owned", "holds", "apply", "fence"),
                *_fns("corral.store.jobs.state", "applied"),  # what apply runs
                # dispatch.py: the lease and the turn lock it takes
                *_fns("corral.store.jobs.dispatch", "lease", "_assign"),
                # lifecycle.py: the worker writes that check the epoch, and what
                # fences a runner off (an undelivered lease, the watchdog)
                *_fns(
                    "corral.store.jobs.lifecycle",
                    "start",
                    "heartbeat",
                    "set_handle",
                    "unlease",
                    "expire",
                    "lose",
                    "_infra",
                ),
            ),
        ),
        Target(
            "recovery",
            ("src/corral/store/jobs/lifecycle.py",),
            (
                "tests/integration/test_store_recovery.py",
                "tests/integration/test_journal_replay.py",
                "-k",
                "not postgres",
            ),
            # lifecycle.py: a runner's journal presented when it registers
            functions=_fns(
                "corral.store.jobs.lifecycle", "recover", "_restore", "_moved_on", "_turn_free"
            ),
        ),
        Target(
            "turns",
            (
                "src/corral/store/jobs/turns.py",
                "src/corral/store/jobs/state.py",
                "src/corral/store/jobs/create.py",
            ),
            (
                "tests/integration/test_store_turns.py",
                "tests/integration/test_store_jobs.py",
                # applied() also sets the later flag (jobs/later.py)
                "tests/integration/test_store_run_at.py",
                "-k",
                "not postgres",
            ),
            # the behind flag: set at create, freed at a turn's end, repaired
            # by the watchdog (the statements themselves are module-level data)
            functions=(
                *_fns("corral.store.jobs.turns", "created_behind", "free_next", "free_heads"),
                *_fns("corral.store.jobs.state", "applied"),
                *_fns("corral.store.jobs.create", "_place"),
            ),
        ),
        Target(
            "later",
            ("src/corral/store/jobs/later.py",),
            (
                "tests/integration/test_store_run_at.py",
                "-k",
                "not postgres",
            ),
            # the later flag: when it is set, and its clearing (the lease's
            # query, built once at import, and its tick in Jobs.lease are
            # checked by hand: docs/benchmarks.md)
            functions=_fns("corral.store.jobs.later", "queued_later", "promote"),
        ),
    )
}

# mutmut's exit codes, as its stats.status_by_exit_code reads them
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests"}
STATUS.update({c: "timeout" for c in (36, -24, 24, 152, 255)})


def _pyproject(target: Target) -> str:
    """The project's pytest settings plus the target's mutmut settings."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pytest_opts = project["tool"]["pytest"]["ini_options"]
    mutmut = {
        "source_paths": ["src"],
        "only_mutate": list(target.files),
        "pytest_add_cli_args_test_selection": list(target.tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-o", "timeout=60"],
        "timeout_multiplier": 5.0,
        "timeout_constant": 2.0,
        "use_git_change_detection": False,
    }
    return "\n".join(
        [
            "# Written by bench/mutation.py: the project's pytest settings and one target.",
            "[tool.pytest.ini_options]",
            *(f"{k} = {json.dumps(v)}" for k, v in pytest_opts.items()),
            "",
            "[tool.mutmut]",
            *(f"{k} = {json.dumps(v)}" for k, v in mutmut.items()),
            "",
        ]
    )


def _prepare(target: Target, keep: bool) -> Path:
    work = SCRATCH / target.name
    if work.exists() and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        link = work / name
        if not link.exists():
            link.symlink_to(ROOT / name, target_is_directory=True)
    (work / "pyproject.toml").write_text(_pyproject(target))
    return work


def _results(work: Path, target: Target) -> dict[str, str]:
    """mutant name -> status, from mutmut's per-file ``.meta`` files."""
    found: dict[str, str] = {}
    for path in target.files:
        meta = json.loads((work / "mutants" / (path + ".meta")).read_text())
        for name, code in meta["exit_code_by_key"].items():
            if target.functions and not any(fnmatch.fnmatch(name, g) for g in target.functions):
                continue
            found[name] = STATUS.get(code, "not checked" if code is None else "other")
    return found


def run(target: Target, *, workers: int, keep: bool) -> tuple[dict[str, str], float, str]:
    work = _prepare(target, keep)
    mutmut = Path(sys.executable).with_name("mutmut")
    if not mutmut.exists():
        sys.exit(f"no {mutmut}: run this with the Python of a venv that has .[dev] installed")
    cmd = [str(mutmut), "run", "--max-children", str(workers), *target.functions]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)  # the PostgreSQL cases are deselected, not required
    log = work / "mutmut.log"
    started = time.monotonic()
    with log.open("w") as out:
        subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    elapsed = time.monotonic() - started
    try:
        return _results(work, target), elapsed, str(log)
    except FileNotFoundError:
        sys.exit(f"mutmut produced no results for {target.name}: see {log}")


def _in(mutant: str, path: str) -> bool:
    """Whether ``mutant`` (module.x_function__mutmut_N) is one of the file's."""
    module = path.removeprefix("src/").removesuffix(".py").replace("/", ".")
    return mutant.rsplit(".", 1)[0] == module


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--workers", type=int, default=1, help="mutant processes at once")
    parser.add_argument("--keep", action="store_true", help="reuse the last run's results")
    parser.add_argument("--list-survivors", action="store_true")
    args = parser.parse_args()
    names = args.targets or list(TARGETS)
    if unknown := set(names) - set(TARGETS):
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    header = ["module", "mutants", "killed", "survived", "timeout", "no tests", "score", "time"]
    rows, survivors = [], []
    for name in names:
        target = TARGETS[name]
        results, elapsed, log = run(target, workers=args.workers, keep=args.keep)
        groups = [(name, results)]
        if len(target.files) > 1:
            groups = [
                (f"{name}: {Path(f).name}", {k: v for k, v in results.items() if _in(k, f)})
                for f in target.files
            ] + groups
        for label, found in groups:
            count = Counter(found.values())
            total = len(found)
            score = 100.0 * (count["killed"] + count["timeout"]) / total if total else 0.0
            cells = [label, str(total)]
            cells += [str(count[s]) for s in ("killed", "survived", "timeout", "no tests")]
            cells += [f"{score:.1f} %", f"{elapsed / 60:.1f} min" if label == name else ""]
            rows.append(cells)
        survivors += [f"{k}: {v}" for k, v in sorted(results.items()) if v != "killed"]
        print(f"{name}: done in {elapsed:.0f} s (mutmut's output: {log})", file=sys.stderr)
    print(_row(header))
    print(_row(["---"] * len(header)))
    for cells in rows:
        print(_row(cells))
    print(f"load average: {os.getloadavg()[0]:.2f} (1 min) at the end; workers: {args.workers}")
    if args.list_survivors:
        for name in survivors:
            print(name)


if __name__ == "__main__":
    main()
