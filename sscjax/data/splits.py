"""Reproducible patient splits: a fixed test set plus k cross-validation folds, stored as `splits.json`.

A patient (scan id) lies in exactly one of: the test set or one fold. Fold k validates on fold k and trains
on the other folds. The paper kept 50 of 230 patients (about 22 %) as a test set and ran 4-fold
cross-validation on the other 180; the defaults (`n_folds=4`, `test_fraction=0.2`) follow that.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sscjax.errors import CohortError, ConfigError
from sscjax.io import atomic_write

SPLITS_FILE = "splits.json"
SPLITS_VERSION = 1
DEFAULT_FOLDS = 4
# The paper: 50 test patients of 230 (22 %); 0.2 keeps a similar share on cohorts of any size.
DEFAULT_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Splits:
    """A fixed test set and `n_folds` validation folds (sorted scan ids), made from `seed`."""

    seed: int
    test: list[str]
    folds: list[list[str]]

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    @property
    def ids(self) -> list[str]:
        """Every scan id of the split, sorted."""
        return sorted([*self.test, *(i for fold in self.folds for i in fold)])

    def fold(self, k: int) -> tuple[list[str], list[str]]:
        """(train ids, validation ids) of fold `k` (0-based): validate on fold k, train on the others."""
        if not 0 <= k < self.n_folds:
            raise ConfigError(f"fold {k} does not exist: folds are numbered 0 .. {self.n_folds - 1}")
        train = sorted(i for j, fold in enumerate(self.folds) if j != k for i in fold)
        return train, list(self.folds[k])

    def to_json(self) -> dict:
        return {
            "version": SPLITS_VERSION,
            "seed": self.seed,
            "n_folds": self.n_folds,
            "test": list(self.test),
            "folds": [list(f) for f in self.folds],
        }


def _repeated(ids: list[str]) -> list[str]:
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def _shuffle_key(seed: int, scan_id: str) -> str:
    """A per-id sort key from (seed, id): the order never depends on the input order or the numpy version."""
    return hashlib.sha256(f"{seed}\0{scan_id}".encode()).hexdigest()


def n_test_patients(
    n_ids: int, n_folds: int, test_fraction: float = DEFAULT_TEST_FRACTION, n_test: int | None = None
) -> int:
    """How many patients go to the test set: `n_test`, or round(test_fraction * n) but at least 1 when
    test_fraction > 0, and never so many that a fold would be empty."""
    if n_test is None:
        if not 0 <= test_fraction < 1:
            raise ConfigError(f"test fraction {test_fraction} must lie in [0, 1)")
        n_test = round(test_fraction * n_ids)
        if test_fraction > 0:
            n_test = max(1, n_test)
        n_test = min(n_test, n_ids - n_folds)
    if n_test < 0 or n_test > n_ids - n_folds:
        raise ConfigError(
            f"{n_test} test patients leave fewer than {n_folds} patients for {n_folds} folds (the cohort has {n_ids})"
        )
    return n_test


def make_splits(
    ids: Iterable[str],
    n_folds: int = DEFAULT_FOLDS,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    n_test: int | None = None,
    seed: int = 0,
) -> Splits:
    """Split scan ids into a test set and `n_folds` folds whose sizes differ by at most one.

    The order comes from hashing (seed, id), so the same ids and seed give the same splits whatever the
    input order, on any machine. `n_test` (if given) overrides `test_fraction`.
    """
    ids = list(ids)
    repeated = _repeated(ids)
    if repeated:
        raise CohortError([f"scan id(s) listed more than once: {', '.join(repeated)}"])
    if n_folds < 2:
        raise ConfigError(f"{n_folds} fold(s): cross-validation needs at least 2")
    if len(ids) < n_folds + 1:
        raise CohortError(
            [f"{len(ids)} patient(s) are too few for a test set and {n_folds} folds (at least {n_folds + 1} needed)"]
        )
    order = sorted(ids, key=lambda i: (_shuffle_key(seed, i), i))
    n_test = n_test_patients(len(ids), n_folds, test_fraction, n_test)
    folds = [sorted(part.tolist()) for part in np.array_split(np.asarray(order[n_test:], dtype=object), n_folds)]
    return Splits(seed=seed, test=sorted(order[:n_test]), folds=folds)


def _parse(data: object, where: str) -> tuple[Splits | None, list[str]]:
    """The Splits in a parsed splits.json, or the problems with its structure."""
    if not isinstance(data, dict):
        return None, [f"{where}: expected a JSON object with 'seed', 'test' and 'folds'"]
    problems = [f"{where}: missing key '{key}'" for key in ("seed", "test", "folds") if key not in data]
    if problems:
        return None, problems
    test, folds, seed = data["test"], data["folds"], data["seed"]
    if not isinstance(seed, int):
        problems.append(f"{where}: 'seed' must be an integer, not {seed!r}")
    if not (isinstance(test, list) and all(isinstance(i, str) for i in test)):
        problems.append(f"{where}: 'test' must be a list of scan ids (strings)")
    if not (
        isinstance(folds, list)
        and len(folds) >= 2
        and all(isinstance(f, list) and f and all(isinstance(i, str) for i in f) for f in folds)
    ):
        problems.append(f"{where}: 'folds' must be a list of at least 2 non-empty lists of scan ids (strings)")
    if "n_folds" in data and isinstance(folds, list) and data["n_folds"] != len(folds):
        problems.append(f"{where}: 'n_folds' is {data['n_folds']} but 'folds' holds {len(folds)} lists")
    if problems:
        return None, problems
    return Splits(seed=seed, test=list(test), folds=[list(f) for f in folds]), []


def splits_problems(splits: Splits, ids: Iterable[str], where: str) -> list[str]:
    """What is wrong with `splits` for a cohort of `ids`: repeated, extra and missing ids."""
    listed = [*splits.test, *(i for fold in splits.folds for i in fold)]
    problems = []
    repeated = _repeated(listed)
    if repeated:
        problems.append(f"{where}: id(s) in more than one place (test/folds): {', '.join(repeated)}")
    ids = set(ids)
    extra, missing = sorted(set(listed) - ids), sorted(ids - set(listed))
    if extra:
        problems.append(f"{where}: id(s) not in the cohort: {', '.join(extra)}")
    if missing:
        problems.append(f"{where}: cohort id(s) missing from the splits: {', '.join(missing)}")
    return problems


def load_splits_file(path: Path) -> tuple[Splits | None, list[str]]:
    """Parse a splits.json file: (splits, []) or (None, problems)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{path}: missing"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, [f"{path}: not valid JSON ({e})"]
    return _parse(data, str(path))


def read_splits(root: str | Path, ids: Iterable[str]) -> Splits:
    """Read `root/splits.json` and check that it splits exactly the cohort's `ids`; CohortError otherwise."""
    path = Path(root) / SPLITS_FILE
    splits, problems = load_splits_file(path)
    if splits is not None:
        problems = splits_problems(splits, ids, str(path))
    if problems:
        raise CohortError(problems)
    assert splits is not None  # no splits always comes with problems
    return splits


def write_splits(root: str | Path, splits: Splits) -> Path:
    """Write `root/splits.json` atomically."""
    path = Path(root) / SPLITS_FILE
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(splits.to_json(), indent=1) + "\n", encoding="utf-8")
    return path
