"""Fine-tuning from a run (`ssc train NET --init RUN`), the authors' imported networks first: training starts from
exactly the imported weights, and three steps of this project's engine reproduce the fixtures' three PyTorch steps
(Adam, L2 weight decay, BatchNorm on batch statistics with PyTorch's momentum and running variance, MSE) on the
authors' inputs and targets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_ssc as ssc
from flax import nnx

from sscjax import lnet, networks, runs, snet, train
from sscjax.authors_runs import import_authors
from sscjax.configs import AUTHORS
from sscjax.errors import ConfigError
from sscjax.phantom import write_cohort
from sscjax.provenance import run_record
from sscjax.run_files import check_init, init_settings, load_model, model_arrays

FIXTURES = Path(__file__).parent / "fixtures" / "authors_networks"
RTOL = 1e-4
STEPS = 3
NETS = {"lnet": "lnet_vgg11_3d", "snet": "snet_convnext"}  # network -> fixture checkpoint (and step files' prefix)
STEP_FILES = {"lnet": "lnet_step", "snet": "snet_convnext_step"}
# The ConvNeXt's depthwise convolutions as one grouped convolution: its training step compiles 4x faster on a CPU than
# with the shifted sums (40 s), and gives the same numbers up to rounding (tests/test_convnext.py).
SETTINGS = {"lnet": [], "snet": ['model.kwargs.depthwise="grouped"']}


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    """The fixture L-Net and ConvNeXt S-Net imported as run folders."""
    root = tmp_path_factory.mktemp("imported")
    return {
        net: import_authors(FIXTURES / f"{name}.pt", net, root / net, SETTINGS[net])[0] for net, name in NETS.items()
    }


def fixture_batch(net: str) -> dict[str, np.ndarray]:
    """The fixtures' training batch: the L-Net's crops channels-last, the S-Net's slices after the authors'
    preprocessing ((HU + 1500) / 3000 at their own size); targets in slices of the crop and in percent."""
    if net == "lnet":
        inputs = np.load(FIXTURES / "lnet_step_input.npy").transpose(0, 2, 3, 4, 1)  # NCDHW -> NDHWC
    else:
        inputs = snet.prepare_slices(np.load(FIXTURES / "snet_input_hu.npy"), image_size=None)
    return {"inputs": inputs, "targets": np.load(FIXTURES / f"{STEP_FILES[net]}_targets.npy")}


def finetune_config(net: str, run: Path, batch_size: int):
    """The paper preset started from `run`, as `ssc train NET --init RUN` makes it, with every dropout and
    stochastic depth at 0 (as in the fixtures) and the fixture's batch, three steps."""
    config = init_settings(networks.preset(net, "paper"), run)
    kwargs = {**config.model.kwargs, **({"stochastic_depth_prob": 0.0} if net == "snet" else {})}
    model = dataclasses.replace(config.model, kwargs=kwargs, dropout=0.0)
    schedule = dataclasses.replace(config.train, batch_size=batch_size, steps=STEPS)
    return dataclasses.replace(config, model=model, train=schedule)


@dataclasses.dataclass
class FixtureTask:
    """The engine's view of a network fine-tuned on the fixture batch: its model (the init run's weights) and the
    loss the tasks use (MSE on the network's output scale)."""

    net: str
    config: object
    examples_per_epoch: int

    def make_model(self, rngs: nnx.Rngs) -> nnx.Module:
        if self.net == "lnet":
            return lnet.make_lnet(self.config, rngs, np.zeros(5, np.float32))
        return snet.make_snet(self.config, rngs)

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
        scale = snet.output_scale(self.config) if self.net == "snet" else 1.0
        return train.mse(model(batch["inputs"]), batch["targets"] / scale)


def start(net: str, run: Path) -> tuple[FixtureTask, tuple]:
    """The task and the engine's `init_training` of the fixture network fine-tuned from `run`."""
    batch = fixture_batch(net)
    config = finetune_config(net, run, len(batch["targets"]))
    check_init(config)
    task = FixtureTask(net, config, len(batch["targets"]))
    return task, train.init_training(task, config.train, train.data_mesh())


def max_relative_error(actual, expected) -> float:
    return float(np.max(np.abs(np.asarray(actual) - expected) / np.abs(expected)))


@pytest.mark.parametrize("net", NETS)
def test_training_starts_from_exactly_the_imported_network(imported, net):
    _, (_, params, state, _, _) = start(net, imported[net])
    want_params, want_state = model_arrays(load_model(imported[net], net)[0])
    for got, want in ((params, want_params), (state, want_state)):
        got_flat, want_flat = nnx.to_flat_state(got), nnx.to_flat_state(want)
        assert [p for p, _ in got_flat] == [p for p, _ in want_flat]
        for (path, a), (_, b) in zip(got_flat, want_flat):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


@pytest.mark.parametrize("net", NETS)
def test_three_engine_steps_reproduce_the_authors_pytorch_steps(imported, net):
    task, (model_def, params, state, tx, opt_state) = start(net, imported[net])
    assert task.config.data.conventions == AUTHORS and not task.config.train.decoupled_weight_decay
    mesh = train.data_mesh()
    batch = train.shard_batch(fixture_batch(net), mesh)
    step = train.make_train_step(task, model_def, tx)
    losses = []
    for i in range(STEPS):
        params, opt_state, state, out = step(params, opt_state, state, batch, jax.random.key(i))
        losses.append(float(out["loss"]))
    outputs = train.make_predict_step(lambda m, x: m(x), model_def, mesh)(params, state, batch["inputs"])
    expected_losses = json.loads((FIXTURES / f"{STEP_FILES[net]}_losses.json").read_text())["losses"]
    assert max_relative_error(losses, expected_losses) < RTOL, (losses, expected_losses)
    expected = np.load(FIXTURES / f"{STEP_FILES[net]}_expected.npy")
    assert max_relative_error(outputs, expected) < RTOL, (np.asarray(outputs), expected)


def test_ssc_train_snet_init_fine_tunes_the_imported_network_and_records_it(monkeypatch, capsys, tmp_path, imported):
    write_cohort(tmp_path / "data", 8, "small", seed=3)
    workdir = tmp_path / "runs"
    args = ["--data", tmp_path / "data", "--workdir", workdir, "--steps", "2", "--no-synthesis"]
    code, out, err = ssc(
        monkeypatch, capsys, "train", "snet", "--init", imported["snet"], *args, "--set", "train.batch_size=4"
    )
    assert code == 0 and "snet fold 0: 2 steps" in out, err
    config = runs.read_config(workdir / "snet" / "fold0", "snet")
    assert config.init is not None and config.init.run == str(imported["snet"].resolve())
    assert config.init.checkpoint_sha256 == run_record(imported["snet"])["checkpoint_sha256"]
    assert (config.model.name, config.data.conventions, config.data.image_size) == ("convnext", AUTHORS, 128)
    assert config.pretrained is None and config.model.imported_from is None
    assert runs.has_checkpoint(workdir / "snet" / "fold0", "best")


def test_an_init_run_of_another_network_or_beside_pretrained_is_one_line(monkeypatch, capsys, tmp_path, imported):
    code, _, err = ssc(monkeypatch, capsys, "train", "lnet", "--init", imported["snet"], "--data", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is a run of the snet, not of the lnet" in err
    code, _, err = ssc(
        monkeypatch, capsys, "train", "snet", "--init", imported["snet"], "--pretrained", "none", "--data", tmp_path
    )
    assert code == 2 and "--pretrained and --init" in err


def test_a_changed_init_checkpoint_is_refused(imported):
    config = init_settings(networks.preset("snet", "paper"), imported["snet"])
    changed = dataclasses.replace(config, init=dataclasses.replace(config.init, checkpoint_sha256="0" * 64))
    with pytest.raises(ConfigError, match="no longer the one these settings start from"):
        check_init(changed)
