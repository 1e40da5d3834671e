"""Provenance: checksums that equal hashlib's and sha256sum's, run records that change with their config and
checkpoint, the installed versions and device, and choosing JAX's backend (`ssc cascade --device`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import pytest
import SimpleITK as sitk

from sscjax import provenance
from sscjax.errors import ConfigError, ModelError

FIXTURES = Path(__file__).parent / "fixtures" / "real_ct"
REAL_CT = sorted(FIXTURES.glob("*.dcm")) if FIXTURES.is_dir() else []


def gpu_present() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def fake_run(root: Path, step: int = 120) -> Path:
    """A run folder laid out as training leaves it: config.json and an orbax-like best checkpoint (plus a stale
    older step and a checkpoint still being written, which are not the one loaded)."""
    run = root / "snet" / "fold0"
    (run / "checkpoints" / "best" / "40" / "model").mkdir(parents=True)
    (run / "checkpoints" / "best" / f"{step + 10}.orbax-checkpoint-tmp-1").mkdir()
    best = run / "checkpoints" / "best" / str(step)
    (best / "model" / "d").mkdir(parents=True)
    (best / "meta").mkdir()
    (best / "model" / "d" / "0.0").write_bytes(np.arange(5000, dtype=np.float32).tobytes())
    (best / "meta" / "metadata").write_text(json.dumps({"step": step}))
    (best / "_CHECKPOINT_METADATA").write_text("{}")
    (run / "config.json").write_text(json.dumps({"net": "snet", "train": {"lr": 1e-4}}, indent=1))
    return run


def sha256sum_manifest(folder: Path) -> str:
    """The folder checksum as the module's docstring says the shell computes it."""
    out = subprocess.run(
        f"cd '{folder}' && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum | sha256sum",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[0]


def test_a_file_checksum_is_its_sha256_read_in_chunks(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()  # 3 MiB: many chunks
    (tmp_path / "scan.nii.gz").write_bytes(data)
    assert provenance.file_sha256(tmp_path / "scan.nii.gz") == hashlib.sha256(data).hexdigest()
    record = provenance.input_record(tmp_path / "scan.nii.gz")
    assert record == {
        "path": str((tmp_path / "scan.nii.gz").resolve()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "files": 1,
    }


@pytest.mark.skipif(len(REAL_CT) < 2 or shutil.which("sha256sum") is None, reason="needs the real CT fixtures")
def test_a_dicom_folder_checksum_is_sha256sum_over_its_sorted_files(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for k, path in enumerate(REAL_CT):
        shutil.copy(path, series / f"IM{9 - k:04d}")
    record = provenance.input_record(series)
    assert record["files"] == len(REAL_CT) and record["sha256"] == sha256sum_manifest(series)
    manifest = "".join(
        f"{hashlib.sha256((series / n).read_bytes()).hexdigest()}  {n}\n"
        for n in sorted(p.name for p in series.iterdir())
    )
    assert record["sha256"] == hashlib.sha256(manifest.encode()).hexdigest()
    data = (series / "IM0009").read_bytes()
    (series / "IM0009").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert provenance.input_record(series)["sha256"] != record["sha256"]


def test_an_mhd_checksum_covers_its_data_file(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(tmp_path / "scan.mhd"))
    data = [p for p in tmp_path.iterdir() if p.name != "scan.mhd"]
    assert len(data) == 1
    assert provenance.input_files(tmp_path / "scan.mhd") == [tmp_path / "scan.mhd", data[0]]
    before = provenance.input_record(tmp_path / "scan.mhd")
    assert before["files"] == 2 and before["sha256"] == sha256sum_manifest(tmp_path)
    data[0].write_bytes(b"\x01" + data[0].read_bytes()[1:])  # the header is untouched
    assert provenance.input_record(tmp_path / "scan.mhd")["sha256"] != before["sha256"]


def test_a_run_record_names_the_loaded_checkpoint_and_hashes_it_and_the_config(tmp_path):
    run = fake_run(tmp_path)
    record = provenance.run_record(run)
    best = run / "checkpoints" / "best" / "120"
    assert record == {
        "run": str(run.resolve()),
        "config_sha256": hashlib.sha256((run / "config.json").read_bytes()).hexdigest(),
        "checkpoint": "best",
        "checkpoint_step": 120,
        "checkpoint_sha256": sha256sum_manifest(best),
    }
    (run / "config.json").write_text(json.dumps({"net": "snet", "train": {"lr": 3e-4}}, indent=1))
    changed = provenance.run_record(run)
    assert changed["config_sha256"] != record["config_sha256"]
    assert changed["checkpoint_sha256"] == record["checkpoint_sha256"]
    weights = best / "model" / "d" / "0.0"
    weights.write_bytes(weights.read_bytes()[:-4] + np.float32(1.5).tobytes())
    assert provenance.run_record(run)["checkpoint_sha256"] != record["checkpoint_sha256"]


def test_a_run_without_a_checkpoint_is_refused(tmp_path):
    run = fake_run(tmp_path)
    with pytest.raises(ModelError, match="no saved latest checkpoint"):
        provenance.run_record(run, "latest")


def test_versions_and_device_are_the_installed_and_running_ones():
    assert provenance.versions() == {
        "sscjax": metadata.version("sscjax"),
        "jax": jax.__version__,
        "jaxlib": metadata.version("jaxlib"),
    }
    assert metadata.version("jax") == jax.__version__
    device = jax.devices()[0]
    assert provenance.device_record() == {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "count": jax.device_count(),
    }


def test_a_record_holds_versions_device_runs_and_input(tmp_path):
    (tmp_path / "scan.mha").write_bytes(b"scan bytes")
    runs = {"lnet": [], "snet": [provenance.run_record(fake_run(tmp_path))]}
    record = provenance.record(str(tmp_path / "scan.mha"), runs)
    assert record["models"] == runs and record["input"]["sha256"] == hashlib.sha256(b"scan bytes").hexdigest()
    assert {k: record[k] for k in ("sscjax", "jax", "jaxlib")} == provenance.versions()
    assert record["device"] == provenance.device_record()
    assert provenance.record("", runs)["input"] is None


def test_asking_for_the_running_backend_is_accepted_and_a_missing_one_refused():
    running = jax.devices()[0].platform
    provenance.use_platform(None)
    provenance.use_platform("cpu" if running == "cpu" else "gpu")
    assert jax.devices()[0].platform == running
    with pytest.raises(ConfigError, match="not one of cpu, gpu"):
        provenance.use_platform("tpu")
    if not gpu_present():
        with pytest.raises(ConfigError, match="--device gpu: JAX finds no GPU on this machine"):
            provenance.use_platform("gpu")
        assert jax.devices()[0].platform == running  # the failed request changed nothing


@pytest.mark.parametrize(
    "command",
    [
        ["cascade", "--scan", "{tmp}", "--out", "{tmp}/out"],
        ["explain", "--scan", "{tmp}", "--out", "{tmp}/out"],
        ["explain", "calibrate", "--model", "{tmp}"],
        ["train", "lnet", "--data", "{tmp}", "--workdir", "{tmp}/out"],
    ],
    ids=" ".join,
)
def test_device_gpu_without_one_is_one_line_and_exit_2(tmp_path, command):
    if gpu_present():
        pytest.skip("this machine has a GPU")
    args = [part.format(tmp=tmp_path) for part in command]
    done = subprocess.run(
        [sys.executable, "-c", "from sscjax.cli.main import main; main()", *args, "--device", "gpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "Error: --device gpu: JAX finds no GPU on this machine (no such device, or a jaxlib without GPU support)"
    )
    assert not (tmp_path / "out").exists()


def test_the_batch_side_file_covers_every_finished_scan_and_keeps_what_others_made(tmp_path):
    from sscjax import cascade

    runs = {"lnet": [], "snet": [provenance.run_record(fake_run(tmp_path / "runs"))]}
    batch = provenance.batch_record(runs)
    older = {**batch, "jax": "0.4.30"}  # a scan an earlier call into OUT scored with another JAX
    out = tmp_path / "out"
    for sid, made in (("a", batch), ("b", older), ("c", None), ("killed", batch)):
        folder = out / sid
        folder.mkdir(parents=True)
        (folder / "scores.csv").write_text(f"scan_id,level,TOT\n{sid},1,5.0\n")
        if sid == "killed":  # its scores.json, written last, never came
            continue
        inputs = {"path": f"/scans/{sid}.mha", "sha256": sid * 64, "files": 1}
        result = {"scan": sid} if made is None else {"scan": sid, "provenance": {**made, "input": inputs}}
        (folder / "scores.json").write_text(json.dumps(result))
    csv_path = cascade.collect_scores(out, runs)
    assert [line.split(",")[0] for line in csv_path.read_text().splitlines()[1:]] == ["a", "b", "c"]
    side = json.loads((out / cascade.BATCH_PROVENANCE).read_text())
    assert {k: v for k, v in side.items() if k != "scans"} == batch
    assert side["scans"] == {
        "a": {"input": {"path": "/scans/a.mha", "sha256": "a" * 64, "files": 1}},
        "b": {"input": {"path": "/scans/b.mha", "sha256": "b" * 64, "files": 1}, "provenance": older},
        "c": {"input": None, "provenance": None},  # a result of an sscjax before provenance
    }
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["scores.csv", cascade.BATCH_PROVENANCE]
