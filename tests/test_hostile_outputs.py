"""Hostile inputs that threaten the outputs: scans that would overwrite each other's results, unwritable output
folders, bad levels, damaged or wrong runs, out-of-range reference scores, a bad scan in a batch, bad pretrained
weights, and scores that must stay within 0..100 %. Each case runs `ssc` in-process (tests/hostile.py)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile import Case, check_case

SCORES = ("TOT", "GG", "RET")
_request = None  # the running test's request: cases reach the shared fixtures (trained runs, cohort) through it


@pytest.fixture(autouse=True)
def _fixtures(request):
    global _request
    _request = request
    yield
    _request = None


def fixture(name: str):
    """A shared session fixture's value (trained once, only for the cases that need it)."""
    return _request.getfixturevalue(name)


def cohort_scan(k: int = 0) -> tuple[str, Path, str]:
    """(scan id, scan path, its true levels as --levels text) of a scan of the shared phantom cohort."""
    from sscjax.data import load_cohort

    cohort = load_cohort(fixture("cohort"), check_scans=False)
    sid = cohort.ids[k]
    return sid, cohort.scan_paths[sid], ",".join(f"{z:.2f}" for z in cohort.levels_mm[sid])


def snet_run() -> Path:
    return fixture("snet_trained")[0]


def copied_run(run: Path, tmp: Path) -> Path:
    """A copy of a trained run under tmp (to be damaged, or named in messages)."""
    return Path(shutil.copytree(run, tmp / "run", ignore=shutil.ignore_patterns("tensorboard", "eval", "explain")))


def a_file(tmp: Path) -> Path:
    """A regular file, so that TMP/afile/out cannot be made (root ignores permission bits, not this)."""
    (tmp / "afile").write_text("a file, not a folder\n")
    return tmp / "afile" / "out"


def score_csv(path: Path, ids=("s1", "s2"), bad: tuple[int, str, str | None] | None = None) -> Path:
    """A scan_id,level,TOT,GG,RET file of 5 levels per scan; `bad` = (row, column, value) replaces one cell, or with
    value None leaves the column out."""
    rows = [{"scan_id": sid, "level": lv, "TOT": 10 * lv, "GG": 5 * lv, "RET": 5} for sid in ids for lv in range(1, 6)]
    columns = list(rows[0])
    if bad is not None and bad[2] is None:
        columns.remove(bad[1])
    elif bad is not None:
        rows[bad[0]][bad[1]] = bad[2]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def evaluate_args(tmp: Path, truth_bad=None, pred_ids=("s1", "s2"), out: Path | None = None) -> list[str]:
    pred = score_csv(tmp / "pred.csv", pred_ids)
    truth = score_csv(tmp / "truth.csv", bad=truth_bad)
    return ["evaluate", "--pred", pred, "--truth", truth, "--out", out or tmp / "stats"]


def same_name_in_two_folders(tmp: Path) -> list[str]:
    _, first, _ = cohort_scan(0)
    _, second, _ = cohort_scan(1)
    for folder, scan in (("a", first), ("b", second)):
        (tmp / folder).mkdir()
        shutil.copy(scan, tmp / folder / "patient.mha")
    return ["cascade", "--scan", tmp / "a", "--scan", tmp / "b", "--out", tmp / "out"]


def same_name_two_extensions(tmp: Path) -> list[str]:
    from sscjax.io import read_scan, write_image

    _, path, _ = cohort_scan(0)
    (tmp / "scans").mkdir()
    shutil.copy(path, tmp / "scans" / "patient.mha")
    scan = read_scan(path)
    write_image(tmp / "scans" / "patient.nii.gz", scan.array, scan.geometry)
    return ["cascade", "--scan", tmp / "scans", "--out", tmp / "out"]


def cascade_with_levels(levels: str, out: str = "out"):
    def make(tmp: Path) -> list[str]:
        _, path, _ = cohort_scan(0)
        return ["cascade", "--scan", path, "--levels", levels, "--snet", snet_run(), "--out", tmp / out]

    return make


def cascade_unwritable(tmp: Path) -> list[str]:
    _, path, levels = cohort_scan(0)
    return ["cascade", "--scan", path, "--levels", levels, "--snet", snet_run(), "--out", a_file(tmp)]


def explain_unwritable(tmp: Path) -> list[str]:
    _, path, levels = cohort_scan(0)
    return ["explain", "--scan", path, "--levels", levels, "--snet", snet_run(), "--out", a_file(tmp)]


def damaged_run(damage):
    """A cascade with a copy of the S-Net run whose best checkpoint `damage(step folder)` spoiled."""

    def make(tmp: Path) -> list[str]:
        run = copied_run(snet_run(), tmp)
        damage(next((run / "checkpoints" / "best").glob("[0-9]*")))
        _, path, levels = cohort_scan(0)
        return ["cascade", "--scan", path, "--levels", levels, "--snet", run, "--out", tmp / "out"]

    return make


def overwrite_shards(step: Path) -> None:
    for shard in (step / "model" / "d").iterdir():
        shard.write_bytes(b"\x00garbage" * 64)


def truncate_metadata(step: Path) -> None:
    path = step / "model" / "_METADATA"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def lnet_as_snet(tmp: Path) -> list[str]:
    _, path, levels = cohort_scan(0)
    run = copied_run(fixture("lnet_trained")[1], tmp)
    return ["cascade", "--scan", path, "--levels", levels, "--snet", run, "--out", tmp / "out"]


def missing_run(tmp: Path) -> list[str]:
    _, path, levels = cohort_scan(0)
    return ["cascade", "--scan", path, "--levels", levels, "--snet", tmp / "no_run", "--out", tmp / "out"]


def batch_with_garbage(tmp: Path) -> list[str]:
    sid, path, _ = cohort_scan(2)
    (tmp / "scans").mkdir()
    shutil.copy(path, tmp / "scans" / f"{sid}.mha")
    (tmp / "scans" / "garbage.mha").write_bytes(bytes(range(256)) * 8)
    return [
        "cascade",
        "--scan",
        tmp / "scans",
        "--lnet",
        fixture("lnet_trained")[1],
        "--snet",
        snet_run(),
        "--out",
        tmp / "out",
    ]


def batch_scored_the_good_scan(tmp: Path, out: str, err: str) -> None:
    done = sorted(p.name for p in (tmp / "out").iterdir() if (p / "scores.json").is_file())
    assert done == [cohort_scan(2)[0]] and not (tmp / "out" / "garbage").exists()


def pretrained_garbage(tmp: Path) -> list[str]:
    (tmp / "garbage.pth").write_bytes(b"\x80\x02garbage" * 100)
    return [
        "train",
        "snet",
        "--data",
        fixture("cohort"),
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--workdir",
        tmp / "runs",
        "--pretrained",
        tmp / "garbage.pth",
    ]


def phantom_cascade(tmp: Path) -> list[str]:
    _, path, levels = cohort_scan(0)
    return ["cascade", "--scan", path, "--levels", levels, "--snet", snet_run(), "--out", tmp / "out", "--all-slices"]


def csv_scores(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        return np.array(
            [
                [float(row[p]) for p in SCORES] + [float(row.get(f"{p}_5", 0)) for p in SCORES]
                for row in csv.DictReader(f)
            ]
        )


def scores_within_bounds(tmp: Path, out: str, err: str) -> None:
    sid = cohort_scan(0)[0]
    result = json.loads((tmp / "out" / sid / "scores.json").read_text())
    values = [v for lv in result["levels"] for key, v in lv.items() if key.split("_")[0] in SCORES]
    values += list(result["mean"].values())
    assert len(values) == 5 * 6 + 6 and all(0 <= v <= 100 for v in values)
    assert all(set(lv["raw"]) == set(SCORES) for lv in result["levels"])
    for table in (tmp / "out" / sid / "scores.csv", tmp / "out" / "scores.csv"):
        assert ((csv_scores(table) >= 0) & (csv_scores(table) <= 100)).all()
    with open(tmp / "out" / sid / "all_slices.csv", newline="") as f:
        every = np.array([[float(row[p]) for p in SCORES] for row in csv.DictReader(f)])
    assert every.size and ((every >= 0) & (every <= 100)).all()


CASES = [
    Case(
        "same file name in two folders",
        same_name_in_two_folders,
        2,
        "both have the scan id",
        outputs=("out",),
        names="{tmp}/a/patient.mha",
    ),
    Case(
        "scan.mha beside scan.nii.gz",
        same_name_two_extensions,
        2,
        "both have the scan id",
        outputs=("out",),
        names="{tmp}/scans/patient.nii.gz",
    ),
    Case("cascade --out under a file", cascade_unwritable, 2, "cannot write outputs here", names="{tmp}/afile"),
    Case(
        "evaluate --out under a file",
        lambda tmp: evaluate_args(tmp, out=a_file(tmp)),
        2,
        "cannot write outputs",
        names="{tmp}/afile",
    ),
    Case("explain --out under a file", explain_unwritable, 2, "cannot write outputs here", names="{tmp}/afile"),
    Case(
        "--levels with nan",
        cascade_with_levels("nan,1,2,3,4"),
        2,
        "must be finite",
        names="nan,1,2,3,4",
        outputs=("out",),
    ),
    Case(
        "--levels with four values",
        cascade_with_levels("40,30,20,10"),
        2,
        "expected five numbers",
        names="40,30",
        outputs=("out",),
    ),
    Case(
        "--levels out of order",
        cascade_with_levels("10,20,30,40,50"),
        2,
        "must go down the body",
        names="10,20",
        outputs=("out",),
    ),
    Case(
        "checkpoint shards overwritten",
        damaged_run(overwrite_shards),
        2,
        "checkpoint (step",
        names="{tmp}/run",
        outputs=("out",),
    ),
    Case(
        "checkpoint metadata truncated",
        damaged_run(truncate_metadata),
        2,
        "unreadable or corrupt",
        names="{tmp}/run",
        outputs=("out",),
    ),
    Case(
        "an l-net run given to --snet",
        lnet_as_snet,
        2,
        "is a run of the lnet, not of the snet",
        names="{tmp}/run",
        outputs=("out",),
    ),
    Case("a missing run folder", missing_run, 2, "not a training run", names="{tmp}/no_run", outputs=("out",)),
    Case(
        "reference score -20",
        lambda tmp: evaluate_args(tmp, (3, "GG", "-20")),
        2,
        "gg '-20' is outside 0..100",
        names="{tmp}/truth.csv, data row 4",
        outputs=("stats",),
    ),
    Case(
        "reference score 150",
        lambda tmp: evaluate_args(tmp, (7, "TOT", "150")),
        2,
        "tot '150' is outside 0..100",
        names="{tmp}/truth.csv, data row 8",
        outputs=("stats",),
    ),
    Case(
        "reference score nan",
        lambda tmp: evaluate_args(tmp, (0, "RET", "nan")),
        2,
        "is not a finite number",
        names="{tmp}/truth.csv, data row 1",
        outputs=("stats",),
    ),
    Case(
        "reference score not a number",
        lambda tmp: evaluate_args(tmp, (1, "RET", "five")),
        2,
        "ret 'five' is not a finite number",
        names="{tmp}/truth.csv",
        outputs=("stats",),
    ),
    Case(
        "reference without a column",
        lambda tmp: evaluate_args(tmp, (0, "RET", None)),
        2,
        "missing column(s) ret",
        names="{tmp}/truth.csv",
        outputs=("stats",),
    ),
    Case(
        "predictions of other scans",
        lambda tmp: evaluate_args(tmp, pred_ids=("s1", "s9")),
        2,
        "have no row in",
        names="{tmp}/pred.csv",
        outputs=("stats",),
    ),
    Case(
        "a garbage scan in a batch of two",
        batch_with_garbage,
        1,
        "cannot read",
        names="{tmp}/scans/garbage.mha",
        outputs=("out/garbage",),
        extra=batch_scored_the_good_scan,
    ),
    Case(
        "--pretrained garbage",
        pretrained_garbage,
        2,
        "unreadable weights file",
        names="{tmp}/garbage.pth",
        outputs=("runs",),
    ),
    Case("phantom scan with its true levels", phantom_cascade, 0, "", extra=scores_within_bounds),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_outputs(case, tmp_path, monkeypatch, capfd):
    check_case(case, tmp_path, monkeypatch, capfd)
