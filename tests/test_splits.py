"""Patient splits: deterministic, order-independent, disjoint and complete; splits.json round trip and checks."""

import json
import random

import pytest
from test_cohort import make_cohort

from sscjax.data.cohort import ensure_splits, load_cohort
from sscjax.data.splits import make_splits, n_test_patients, read_splits, write_splits
from sscjax.errors import CohortError, ConfigError

IDS = [f"pat{i:03d}" for i in range(37)]


def test_same_seed_same_splits_whatever_the_input_order():
    shuffled = IDS[:]
    random.Random(5).shuffle(shuffled)
    assert make_splits(IDS, seed=7) == make_splits(shuffled, seed=7) == make_splits(reversed(IDS), seed=7)
    assert make_splits(IDS, seed=7) != make_splits(IDS, seed=8)


@pytest.mark.parametrize("n, n_folds", [(37, 4), (230, 4), (5, 4), (12, 5), (3, 2)])
def test_disjoint_complete_and_balanced(n, n_folds):
    ids = [f"s{i}" for i in range(n)]
    splits = make_splits(ids, n_folds=n_folds, seed=1)
    everyone = [*splits.test, *(i for fold in splits.folds for i in fold)]
    assert sorted(everyone) == sorted(ids) and len(everyone) == len(set(everyone))
    sizes = [len(f) for f in splits.folds]
    assert len(sizes) == n_folds == splits.n_folds and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert len(splits.test) >= 1
    assert splits.test == sorted(splits.test) and all(f == sorted(f) for f in splits.folds)
    for k in range(n_folds):
        train, valid = splits.fold(k)
        assert valid == splits.folds[k]
        assert not set(train) & set(valid) and not set(train) & set(splits.test)
        assert sorted(train + valid + splits.test) == sorted(ids)


def test_test_set_size():
    assert len(make_splits([f"s{i}" for i in range(230)]).test) == 46  # 0.2 x 230
    assert len(make_splits([f"s{i}" for i in range(230)], test_fraction=50 / 230).test) == 50  # the paper
    assert len(make_splits(IDS, n_test=10).test) == 10
    assert len(make_splits(IDS, n_test=0).test) == 0
    assert n_test_patients(6, 4, 0.2) == 1  # at least one test patient
    assert n_test_patients(5, 4, 0.9) == 1  # never so many that a fold would be empty
    with pytest.raises(ConfigError, match="fewer than 4 patients for 4 folds"):
        make_splits(IDS, n_test=34)
    with pytest.raises(ConfigError, match="test fraction"):
        make_splits(IDS, test_fraction=1.0)


def test_bad_requests():
    with pytest.raises(CohortError, match="too few for a test set and 4 folds"):
        make_splits(["a", "b", "c", "d"])
    with pytest.raises(CohortError, match="more than once: b"):
        make_splits(["a", "b", "b", "c", "d", "e"])
    with pytest.raises(ConfigError, match="at least 2"):
        make_splits(IDS, n_folds=1)
    with pytest.raises(ConfigError, match=r"0 \.\. 3"):
        make_splits(IDS).fold(4)


def test_write_read_round_trip_and_mismatch(tmp_path):
    splits = make_splits(IDS, n_folds=3, seed=2)
    path = write_splits(tmp_path, splits)
    assert json.loads(path.read_text())["n_folds"] == 3
    assert read_splits(tmp_path, reversed(IDS)) == splits
    with pytest.raises(CohortError) as e:
        read_splits(tmp_path, [*IDS[1:], "newcomer"])
    extra, missing = e.value.problems
    assert str(path) in extra and f"not in the cohort: {IDS[0]}" in extra
    assert "missing from the splits: newcomer" in missing


@pytest.mark.parametrize(
    "content, what",
    [
        ("{not json", "not valid JSON"),
        ('{"seed": 0, "test": []}', "missing key 'folds'"),
        ('{"seed": 0, "test": [], "folds": [["a"]]}', "at least 2 non-empty lists"),
        ('{"seed": 0, "test": ["a"], "folds": [["a", "b"], ["c"]]}', "more than one place (test/folds): a"),
    ],
)
def test_bad_splits_file(tmp_path, content, what):
    (tmp_path / "splits.json").write_text(content)
    with pytest.raises(CohortError) as e:
        read_splits(tmp_path, ["a", "b", "c"])
    assert any(str(tmp_path / "splits.json") in p and what in p for p in e.value.problems), e.value.problems
    with pytest.raises(CohortError, match="missing"):
        read_splits(tmp_path / "elsewhere", ["a"])


def test_ensure_splits_creates_once_then_reuses(tmp_path):
    make_cohort(tmp_path, n=6, masks=False, patterns=False)
    cohort = load_cohort(tmp_path, check_scans=False)
    created = ensure_splits(cohort, n_folds=2, seed=4)
    assert (tmp_path / "splits.json").exists() and created == make_splits(cohort.ids, n_folds=2, seed=4)
    assert ensure_splits(cohort, seed=99) == created  # the file wins over a new seed
    assert ensure_splits(cohort, n_folds=2) == created
    with pytest.raises(CohortError, match="holds 2 folds but 4 were asked for"):
        ensure_splits(cohort, n_folds=4)
    with pytest.raises(CohortError, match="too few"):
        (tmp_path / "splits.json").unlink()
        ensure_splits(cohort, n_folds=6)
