"""The paper authors' checkpoints imported as run folders (`ssc weights import-authors`) and run exactly as their
inference code runs them: the L-Net's levels on a volume and the S-Nets' percent scores reproduce the fixtures made
with their code; files that are not the asked-for network are refused with no run folder left."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_ssc as ssc

from sscjax import cascade, explain, lnet, networks, runs, snet
from sscjax.configs import AUTHORS
from sscjax.data.lnet import median_positions, moments, prepare_volume, window_starts, windows
from sscjax.errors import ConfigError
from sscjax.io import read_scan

FIXTURES = Path(__file__).parent / "fixtures" / "authors_networks"
LNET_FILE = FIXTURES / "lnet_vgg11_3d.pt"
VOLUME = FIXTURES / "lnet_volume.mha"
SNETS = ("convnext", "vgg11_bn")
LEVEL_MM_TOL = 0.01  # mm
POSITION_TOL = 1e-3  # slices of the resampled volume
SCORE_TOL = 1e-3  # percentage points


def import_run(monkeypatch, capsys, file: Path, net: str, run: Path, *assignments: str) -> tuple[int, str]:
    """`ssc weights import-authors FILE --net NET --out RUN [--set ...]`: (exit code, stderr)."""
    sets = [arg for a in assignments for arg in ("--set", a)]
    code, _, err = ssc(monkeypatch, capsys, "weights", "import-authors", file, "--net", net, "--out", run, *sets)
    return code, err


def import_lnet(monkeypatch, capsys, run: Path) -> Path:
    """The fixture L-Net as a run whose matrix is the fixture volume's own (resampling is the identity), with the
    fixture's 96-slice windows, stride 4."""
    expected = json.loads((FIXTURES / "lnet_volume_expected.json").read_text())
    size = list(read_scan(VOLUME).shape)
    code, err = import_run(
        monkeypatch,
        capsys,
        LNET_FILE,
        "lnet",
        run,
        f"data.size={size}",
        f"data.crop={expected['crop']}",
        f"data.stride={expected['stride']}",
    )
    assert code == 0, err
    return run


def test_an_imported_lnet_finds_the_levels_of_the_authors_inference(monkeypatch, capsys, tmp_path):
    expected = json.loads((FIXTURES / "lnet_volume_expected.json").read_text())
    run = import_lnet(monkeypatch, capsys, tmp_path / "lnet")
    code, out, err = ssc(monkeypatch, capsys, "levels", VOLUME, "--model", run)
    assert code == 0, err
    found = json.loads(out)
    levels_mm, want_slices = np.asarray(found["levels_mm"]), np.asarray(expected["levels_slice"])
    np.testing.assert_allclose(levels_mm, expected["levels_mm"], rtol=0, atol=LEVEL_MM_TOL)
    np.testing.assert_array_equal(found["slice_index"], np.rint(want_slices).astype(int))  # resampling: identity

    model = lnet.level_model(run)
    assert model.settings.conventions == AUTHORS
    scan = read_scan(VOLUME)
    starts = window_starts(scan.shape[0], model.settings.crop, model.settings.stride, model.settings.conventions)
    np.testing.assert_array_equal(starts, expected["window_starts"])
    positions = lnet.predict_levels(model, scan).positions
    np.testing.assert_allclose(positions, want_slices, rtol=0, atol=POSITION_TOL)


def test_the_lnet_conventions_each_move_the_levels(monkeypatch, capsys, tmp_path):
    """Each part of the authors' conventions moves a level by more than half a slice on the fixture, so the test
    above, which passes with all of them, checks each."""
    expected = np.asarray(json.loads((FIXTURES / "lnet_volume_expected.json").read_text())["levels_slice"])
    model = lnet.level_model(import_lnet(monkeypatch, capsys, tmp_path / "lnet"))
    volume = prepare_volume(read_scan(VOLUME), model.settings.size).array
    crop, stride, whole = model.settings.crop, model.settings.stride, moments(volume)

    def levels(starts_of: str, scale: tuple[float, float] | None, read_as: str) -> np.ndarray:
        starts = window_starts(len(volume), crop, stride, starts_of)
        outputs = model.predict(windows(volume, starts, crop, scale))
        return median_positions(lnet.to_positions(outputs, crop, read_as), starts)

    np.testing.assert_allclose(levels(AUTHORS, whole, AUTHORS), expected, rtol=0, atol=POSITION_TOL)
    for name, wrong in {
        "windows z-scored each": levels(AUTHORS, None, AUTHORS),
        "the top window added": levels("sscjax", whole, AUTHORS),
        "outputs read as fractions": levels(AUTHORS, whole, "sscjax"),
    }.items():
        assert np.abs(wrong - expected).max() > 0.5, name


@pytest.mark.parametrize("arch", SNETS)
def test_an_imported_snet_scores_as_the_authors_inference_in_the_cascade(monkeypatch, capsys, tmp_path, arch):
    run = tmp_path / arch
    code, err = import_run(monkeypatch, capsys, FIXTURES / f"snet_{arch}.pt", "snet", run)
    assert code == 0, err
    slices = np.load(FIXTURES / "snet_input_hu.npy")
    expected = np.load(FIXTURES / f"snet_{arch}_expected.npy")
    models = cascade.load_models([], [run])
    fold_scores, raw = cascade.score_slices(models, slices)
    np.testing.assert_allclose(raw, expected, rtol=0, atol=SCORE_TOL)
    np.testing.assert_allclose(fold_scores[0], np.clip(expected, 0, 100), rtol=0, atol=SCORE_TOL)
    predict, size = explain.snet_predict(models)  # the heat maps' S-Net: the same inputs and percent
    assert size is None
    heatmap_scores = np.asarray(predict(snet.prepare_slices(slices, size)))
    np.testing.assert_allclose(heatmap_scores, np.clip(expected, 0, 100), rtol=0, atol=SCORE_TOL)


@pytest.mark.parametrize("arch", SNETS)
def test_an_imported_run_records_its_source_architecture_and_conventions(monkeypatch, capsys, tmp_path, arch):
    source = FIXTURES / f"snet_{arch}.pt"
    run = tmp_path / "run"
    run.mkdir()  # an empty folder may be the run folder
    assert import_run(monkeypatch, capsys, source, "snet", run)[0] == 0
    written = json.loads((run / runs.CONFIG_FILE).read_text())
    assert written["model"]["imported_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert Path(written["model"]["imported_from"]) == source.resolve()
    assert written["model"]["name"] == arch and written["model"]["kwargs"]["normalize_input"] is False
    assert written["data"]["conventions"] == AUTHORS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no partial folder left beside it


@pytest.mark.parametrize(
    "file,net,says",
    [
        ("snet_convnext_whole_model.pt", "snet", "not a state dict"),
        ("snet_convnext.pt", "lnet", "not an L-Net; import it with --net snet"),
        ("lnet_vgg11_3d.pt", "snet", "not an S-Net; import it with --net lnet"),
    ],
)
def test_a_file_that_is_not_the_network_is_one_line_and_leaves_no_run(monkeypatch, capsys, tmp_path, file, net, says):
    code, err = import_run(monkeypatch, capsys, FIXTURES / file, net, tmp_path / "run")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and file in err and says in err
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_that_holds_files_is_refused_and_kept(monkeypatch, capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code, err = import_run(monkeypatch, capsys, LNET_FILE, "lnet", run)
    assert code == 2 and "not an empty folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and [p.name for p in run.iterdir()] == ["notes.txt"]


def test_the_authors_conventions_take_no_imagenet_norm():
    snet = networks.preset("snet", "paper")
    assert snet.model.kwargs["normalize_input"]
    with pytest.raises(ConfigError, match="normalize_input"):
        dataclasses.replace(snet, data=dataclasses.replace(snet.data, conventions=AUTHORS))


def test_an_imported_snet_is_evaluated_on_the_cohorts_own_test_split(monkeypatch, capsys, tmp_path, cohort):
    from sscjax.data import ensure_splits, load_cohort

    run = tmp_path / "run"
    assert import_run(monkeypatch, capsys, FIXTURES / "snet_convnext.pt", "snet", run)[0] == 0
    code, _, err = ssc(monkeypatch, capsys, "evaluate", "snet", "--model", run, "--data", cohort, "--split", "test")
    assert code == 0, err
    test_ids = ensure_splits(load_cohort(cohort)).test
    predictions = (run / "eval" / "test" / "predictions.csv").read_text().splitlines()[1:]
    assert sorted({row.split(",")[0] for row in predictions}) == sorted(test_ids) and len(predictions) == 5 * len(
        test_ids
    )


def test_imported_and_trained_snets_ensemble_each_with_its_own_conventions(monkeypatch, capsys, tmp_path, snet_trained):
    trained, _ = snet_trained
    imported = tmp_path / "imported"
    assert import_run(monkeypatch, capsys, FIXTURES / "snet_convnext.pt", "snet", imported)[0] == 0
    slices = np.load(FIXTURES / "snet_input_hu.npy")
    both, _ = cascade.score_slices(cascade.load_models([], [trained, imported]), slices)
    alone = [cascade.score_slices(cascade.load_models([], [run]), slices)[0][0] for run in (trained, imported)]
    np.testing.assert_allclose(both[0], alone[0], atol=1e-4)  # the trained fold: resized, its own scale
    np.testing.assert_allclose(both[1], alone[1], atol=1e-4)  # the imported fold: the authors' preprocessing
    expected = np.load(FIXTURES / "snet_convnext_expected.npy")
    np.testing.assert_allclose(both[1], np.clip(expected, 0, 100), atol=SCORE_TOL)
    assert not np.allclose(both[0], both[1])
