"""Session fixtures shared by the tests of the networks, the cascade, the heat maps and the demo: one small
phantom cohort and the two networks trained on its fold 0 with the tiny presets (the expensive part of the
suite, so it is done once). The default tier trains short runs, enough for every check of what a run writes and
how the commands use it; the slow tier (`pytest -m slow`) trains the whole tiny schedules to prove they learn."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

# the benchmarks' reference implementations (the original code's loops) are the tests' references too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def pytest_configure(config):
    """One XLA compilation cache for the session, in a fresh folder: the many tests that load the same trained run
    compile the same programs, and a program compiles once (the cache starts empty, so a run's time is a cold one)."""
    import tempfile

    import jax

    folder = tempfile.mkdtemp(prefix="sscjax-xla-cache-")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


N_PATIENTS = 20  # 4 test patients and 4 folds of 4
# the default tier's L-Net run: 20 steps of 2 volumes validated every 10 (the tiny schedule: 120 steps of 4)
LNET_SHORT_STEPS, LNET_SHORT_VALID_EVERY, LNET_SHORT_BATCH = 20, 10, 2
SNET_STEPS, SNET_VALID_EVERY = 200, 25  # the slow tier's S-Net run
# the default tier's S-Net run: 50 steps of 8 slices (the preset's 16), validated at 25 and 50
SNET_SHORT_STEPS, SNET_SHORT_BATCH = 50, 8
SNET_IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A project folder with a phantom cohort in data/ (runs go to runs/)."""
    from sscjax.phantom import write_cohort

    root = tmp_path_factory.mktemp("project")
    write_cohort(root / "data", N_PATIENTS, "small", seed=0)
    return root


@pytest.fixture(scope="session")
def cohort(project):
    return project / "data"


@pytest.fixture(scope="session")
def workdir(project):
    return project / "runs"


def train_lnet_cli(data_dir, workdir, *extra):
    from sscjax.cli.main import cli

    return CliRunner().invoke(
        cli,
        [
            "train",
            "lnet",
            "--data",
            str(data_dir),
            "--fold",
            "0",
            "--preset",
            "tiny",
            "--workdir",
            str(workdir),
            *extra,
        ],
        catch_exceptions=False,
    )


def _train_lnet(project, cohort, workdir, *extra):
    result = train_lnet_cli(cohort, workdir, *extra)
    assert result.exit_code == 0, result.output
    return project, workdir / "lnet" / "fold0", result.output


@pytest.fixture(scope="session")
def lnet_trained(project, cohort, workdir):
    """`ssc train lnet --preset tiny` on fold 0 through the CLI, for 20 steps of 2 volumes validated every 10:
    (project root, run folder, printed output)."""
    return _train_lnet(
        project,
        cohort,
        workdir,
        "--steps",
        str(LNET_SHORT_STEPS),
        "--set",
        f"train.valid_every={LNET_SHORT_VALID_EVERY}",
        "--set",
        f"train.batch_size={LNET_SHORT_BATCH}",
    )


@pytest.fixture(scope="session")
def lnet_trained_full(project, cohort):
    """The whole tiny L-Net schedule on fold 0 (slow tier), in a work folder of its own."""
    return _train_lnet(project, cohort, project / "runs_full")


@pytest.fixture(scope="session")
def snet_tiny(cohort):
    """The tiny S-Net preset for fold 0 of the test cohort, at 64 px (its 96 px cost the suite minutes; the engine
    and the recipe are the same)."""
    from sscjax import networks

    tiny = networks.preset("snet", "tiny", data_dir=str(cohort))
    return dataclasses.replace(tiny, data=dataclasses.replace(tiny.data, image_size=SNET_IMAGE_SIZE))


def _train_snet(config, workdir, steps: int, batch_size: int | None = None):
    """(run folder, result) of the S-Net `config` trained on fold 0 for `steps` (of `batch_size`, if given), validated
    every 25."""
    from sscjax import runs, snet

    schedule = dataclasses.replace(config.train, steps=steps, valid_every=SNET_VALID_EVERY, checkpoint_every=None)
    schedule = schedule if batch_size is None else dataclasses.replace(schedule, batch_size=batch_size)
    result = snet.train_snet(dataclasses.replace(config, train=schedule), workdir)
    return runs.default_run_dir(workdir, "snet", 0), result


@pytest.fixture(scope="session")
def snet_trained(snet_tiny, workdir):
    """The tiny S-Net trained on fold 0 for 50 steps of 8 slices, validated at 25 and 50: (run folder, result)."""
    return _train_snet(snet_tiny, workdir, SNET_SHORT_STEPS, SNET_SHORT_BATCH)


@pytest.fixture(scope="session")
def snet_trained_full(snet_tiny, project):
    """The tiny S-Net trained on fold 0 for its 200 steps (slow tier), in a work folder of its own."""
    return _train_snet(snet_tiny, project / "runs_full", SNET_STEPS)


def ssc_process(*args: str, timeout: float):
    """`ssc ARGS` in a process of its own, output captured as text (the slow tests' long runs)."""
    import subprocess

    return subprocess.run(["ssc", *args], capture_output=True, text=True, timeout=timeout)


def run_ssc(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `ssc ARGS` in-process exactly as the console script does: (exit code, stdout, stderr)."""
    from sscjax.cli.main import main

    monkeypatch.setattr(sys, "argv", ["ssc", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pingouin_icc_a1(pred, true) -> tuple[float, list[float]]:
    """ICC(A,1) and its 95 % CI computed by pingouin itself, the reference for our implementation."""
    import pandas as pd
    import pingouin as pg

    n = len(pred)
    long = pd.DataFrame({"t": np.tile(np.arange(n), 2), "r": np.repeat([0, 1], n), "s": np.r_[pred, true]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = pg.intraclass_corr(long, targets="t", raters="r", ratings="s").set_index("Type")
    return table.at["ICC(A,1)", "ICC"], list(table.at["ICC(A,1)", "CI95"])
