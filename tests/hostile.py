"""The harness of the hostile-input suite (tests/test_hostile_*.py): a table of cases, each a bad input or a
fault given to `ssc`, run in-process exactly as the console script runs, and checked the same way for every
case: the exit code, one line on stderr that names the file and the problem (no traceback, no library
noise), the inputs unchanged (checksums), and no partial output left behind."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TEMP_MARKERS = (".tmp",)  # what atomic writes leave behind when they are killed or fail


@dataclass(frozen=True)
class Case:
    """One hostile input: `make(tmp)` builds the inputs under `tmp` and returns the `ssc` arguments.

    `code`: the expected exit code (2: a user's mistake, refused up front; 1: a batch in which some scans failed;
    0: handled correctly). `message`: text the stderr line must hold (lower case). `names`: text that stands for
    the file in that line, "{tmp}" being replaced by the case's folder (default: the line must name some path under
    it). `outputs`: paths (relative to tmp) that must not exist afterwards (a refused command leaves nothing)."""

    name: str
    make: Callable[[Path], list[str]]
    code: int
    message: str
    names: str | None = None
    outputs: tuple[str, ...] = ()
    failed_scans: int = 1  # with code 1: how many scans the summary lists
    extra: Callable[[Path, str, str], None] | None = field(default=None, compare=False)  # more checks: (tmp, out, err)


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_ssc_fd(monkeypatch, capfd, args: list[str]) -> tuple[int, str, str]:
    """`ssc ARGS` in-process as the console script runs it, capturing the file descriptors too (C++ libraries
    write there): (exit code, stdout, stderr). Any exception that escapes `main` fails the test."""
    from sscjax.cli.main import main

    monkeypatch.setattr(sys, "argv", ["ssc", *map(str, args)])
    capfd.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def check_case(case: Case, tmp: Path, monkeypatch, capfd) -> None:
    """Build the case's inputs, run it and apply the checks every hostile case shares."""
    args = case.make(tmp)
    before = checksums(tmp)
    monkeypatch.chdir(tmp)
    code, out, err = run_ssc_fd(monkeypatch, capfd, args)
    context = f"{case.name}: exit {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in out, context
    assert code == case.code, context
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 2:
        assert len(lines) == 1, context
    elif case.code == 1:
        assert len(lines) == 1 + case.failed_scans and "failed" in lines[0], context
    else:
        assert not lines, context
    if case.code:
        problem = " ".join(lines[1:] if case.code == 1 else lines)
        assert case.message in problem.lower(), context
        named = case.names.replace("{tmp}", str(tmp)) if case.names else str(tmp)
        assert named in problem or (case.names is None and Path(named).name in problem), context
    after = checksums(tmp)
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert not changed, f"{case.name}: inputs changed or removed: {changed}"
    leftovers = [k for k in after if any(m in Path(k).name for m in TEMP_MARKERS)]
    assert not leftovers, f"{case.name}: temporary files left behind: {leftovers}"
    for rel in case.outputs:
        assert not (tmp / rel).exists(), f"{case.name}: partial output left behind: {rel}"
    if case.extra is not None:
        case.extra(tmp, out, err)
