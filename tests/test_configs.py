"""Settings as data: the shipped preset files are the library's presets (their generated form, round trips, the
paper's values as the class defaults), the strict loader's refusals, `--set` and `--config` on top of a preset,
old run configs, the registry, and a schema that imports no JAX, SciPy or SimpleITK."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import tomllib
from conftest import run_ssc as ssc
from sscjax.cli.train import training_options  # imported (its --preset choices made) before any test changes them

from sscjax import explain, networks, runs
from sscjax.configs import ModelConfig, TrainConfig, from_dict, merge, text, to_dict
from sscjax.configs.lnet import LNetConfig
from sscjax.configs.snet import ExplainConfig, SNetConfig
from sscjax.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PRESETS = [(net, name) for net in networks.NETWORKS for name in networks.network(net).presets()]


def _classes(cls):
    """Every config dataclass reachable from `cls` (its sections, recursively)."""
    yield cls
    for hint in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(hint):
            yield from _classes(hint)


# ---------------------------------------------------------------- the shipped files


def test_the_top_level_configs_folder_holds_every_preset_and_the_registry_finds_them():
    shipped = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").glob("*/*.toml"))
    assert shipped == sorted(f"{net}/{name}.toml" for net, name in PRESETS)
    assert {("lnet", "paper"), ("lnet", "tiny"), ("snet", "paper"), ("snet", "tiny")} <= set(PRESETS)


@pytest.mark.parametrize("net,name", PRESETS)
def test_every_shipped_file_is_its_generated_form_and_round_trips(net, name):
    path = networks.preset_file(net, name)
    written = path.read_text(encoding="utf-8")
    config = networks.preset(net, name)
    assert config.preset == name and config.net == net
    # the comments come from the field docs and the paper's values: a hand-edited comment or value format shows here
    assert written == networks.render(config, text.header_of(written)), (
        f"{path} is not in its generated form; run python -c 'from sscjax.networks import rewrite_presets; "
        "rewrite_presets()' and check the diff"
    )
    assert from_dict(type(config), text.parse(written, str(path))) == config
    assert from_dict(type(config), json.loads(json.dumps(to_dict(config)))) == config
    assert text.header_of(written).startswith(f'# {networks.network(net).title} preset "{name}"')


@pytest.mark.parametrize("net", networks.NETWORKS)
def test_the_paper_presets_are_the_class_defaults(net):
    cls = networks.network(net).config
    assert networks.preset(net, "paper") == cls()
    tiny = networks.preset(net, "tiny")
    assert tiny != cls() and tiny.train.steps is not None  # a preset file really changes settings


@pytest.mark.parametrize("cls", [LNetConfig, SNetConfig])
def test_every_setting_has_a_doc_and_every_section_a_docstring(cls):
    for section in _classes(cls):
        assert (section.__doc__ or "").strip(), section
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            assert dataclasses.is_dataclass(hints[f.name]) or f.metadata.get("doc"), f"{section.__name__}.{f.name}"


def test_a_file_comment_names_the_paper_value_and_an_unset_setting_is_a_comment():
    written = networks.preset_file("snet", "tiny").read_text()
    assert "# global batch, split over all devices of all hosts (paper: 10)\nbatch_size = 16\n" in written
    assert "# early_stop = (not set)\n" in written
    assert "[explain]\n" in written and "[data.lesions]\n" in written and "[model.kwargs]\n" in written


def test_adding_a_preset_file_adds_the_preset_and_rewriting_puts_it_in_its_generated_form(tmp_path, monkeypatch):
    package = tmp_path / "my_presets"
    for net in networks.NETWORKS:
        (package / net).mkdir(parents=True)
    (package / "__init__.py").write_text("")
    header = '# S-Net preset "small": the tiny one at 128 px.\n'
    small = networks.preset_file("snet", "tiny").read_text().split("\n\n", 1)[1]
    small = small.replace('preset = "tiny"', 'preset = "small"').replace("image_size = 96", "image_size = 128")
    hand_edited = header + "\n" + small.replace("learning_rate = 0.001", "learning_rate = 1e-3  # faster")
    (package / "snet" / "small.toml").write_text(hand_edited)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(networks, "PRESETS_PACKAGE", "my_presets")
    assert networks.network("snet").presets() == ("small",)
    assert networks.preset("snet", "small").data.image_size == 128
    command = training_options("snet")(lambda **options: None)
    (choice,) = [p for p in command.__click_params__ if p.name == "preset"]
    assert list(choice.type.choices) == ["small"]
    with pytest.raises(ConfigError, match="unknown snet preset 'paper' \\(presets: small\\)"):
        networks.preset("snet", "paper")
    assert networks.rewrite_presets() == [package / "snet" / "small.toml"]
    assert (package / "snet" / "small.toml").read_text() == header + "\n" + small


def test_the_package_list_names_every_package_the_tree_holds():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sscjax").rglob("__init__.py")}
    assert found | {"sscjax.cli", "sscjax.presets"} == listed


def test_the_schema_imports_no_jax_scipy_or_simpleitk():
    code = (
        "import sys\n"
        "import sscjax.configs, sscjax.configs.lnet, sscjax.configs.snet, sscjax.configs.text, sscjax.networks\n"
        "from sscjax import networks\n"
        "networks.resolve('snet', 'tiny', assignments=['train.steps=3'])\n"
        "print(sorted(m for m in ('jax', 'scipy', 'SimpleITK', 'flax', 'sscjax.data') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- the strict loader


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"train": {"learnin_rate": 1e-3}}, r"train\.learnin_rate: unknown setting"),
        ({"train": {"batch_size": "16"}}, r"train\.batch_size: expected an integer, got '16'"),
        ({"train": {"batch_size": 4.0}}, r"train\.batch_size: expected an integer, got 4\.0"),
        ({"train": {"steps": True}}, r"train\.steps: expected an integer, got True"),
        ({"train": {"steps": 0}}, r"train\.steps: 0 must be >= 1"),
        ({"train": {"learning_rate": 0}}, r"train\.learning_rate: 0\.0 must be > 0"),
        ({"train": {"average_decay": 1}}, r"train\.average_decay: 1\.0 must be > 0 and < 1"),
        ({"train": {"decay": "linear"}}, r"train\.decay: 'linear' is not one of 'constant', 'cosine'"),
        ({"synthesis": "yes"}, r"synthesis: expected true or false, got 'yes'"),
        ({"data": {"affine": {"scale": [0.9]}}}, r"data\.affine\.scale: expected a list of 2 values"),
        ({"data": {"affine": {"scale": [0.9, "a"]}}}, r"data\.affine\.scale\[1\]: expected a number"),
        ({"data": {"lesions": {"ellipses": [2, 1]}}}, r"data\.lesions: synthesis ellipses per pattern \(2, 1\)"),
        ({"explain": {"patch_px": 60}}, r"explain: heat-map patch_px 60 must be a multiple of stride_px 16"),
        ({"model": {"kwargs": 3}}, r"model\.kwargs: expected a table of settings, got 3"),
        ({"net": "lnet"}, r"net: 'lnet' must be 'snet'"),
        ({"version": 2}, r"version: 2 must be 1"),
        ({"data": 5}, r"data: expected a table of settings, got 5"),
    ],
)
def test_wrong_settings_are_one_error_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SNetConfig, merge(to_dict(SNetConfig()), changes))


def test_numbers_are_converted_only_where_that_loses_nothing():
    config = from_dict(TrainConfig, {"learning_rate": 1, "steps": 3, "average_decay": 0.5})
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float) and config.steps == 3
    assert from_dict(ModelConfig, {"name": "levelnet", "kwargs": {"base": 4}}).kwargs == {"base": 4}
    with pytest.raises(ConfigError, match="model.name: missing setting"):
        from_dict(ModelConfig, {"kwargs": {}}, "model")


def test_old_run_configs_load_with_the_new_settings_at_their_defaults(tmp_path):
    old = to_dict(networks.preset("snet", "tiny"))
    del old["explain"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert runs.load_config(tmp_path / "config.json") == networks.preset("snet", "tiny")
    old_lnet = {**to_dict(networks.preset("lnet", "tiny")), "n_folds": 4}  # a setting that meant nothing
    (tmp_path / "config.json").write_text(json.dumps(old_lnet))
    assert runs.load_config(tmp_path / "config.json") == networks.preset("lnet", "tiny")


def test_resuming_may_change_the_heat_map_settings_but_nothing_that_trains(tmp_path):
    config = networks.preset("snet", "tiny")
    runs.start_run(tmp_path, config, {"fold": 0}, "abc")
    runs.start_run(
        tmp_path, dataclasses.replace(config, explain=ExplainConfig(stride_px=8)), {"fold": 0}, "abc", resume=True
    )
    with pytest.raises(ConfigError, match=r"data\.affine\.shift_px 10\.0 -> 5\.0"):
        changed = networks.with_changes(config, ["data.affine.shift_px=5"])
        runs.start_run(tmp_path, changed, {"fold": 0}, "abc", resume=True)


# ---------------------------------------------------------------- --set, --config and the flags


@pytest.mark.parametrize(
    "assignment,path,value",
    [
        ("train.learning_rate=3e-4", ["train", "learning_rate"], 3e-4),
        ("data.size=[96, 64, 64]", ["data", "size"], [96, 64, 64]),
        ("train.decoupled_weight_decay=true", ["train", "decoupled_weight_decay"], True),
        ('model.name="levelnet"', ["model", "name"], "levelnet"),
        ("train.decay=cosine", ["train", "decay"], "cosine"),  # no TOML value: a string
        ("pretrained=/data/w.pth", ["pretrained"], "/data/w.pth"),
    ],
)
def test_set_values_are_toml_values(assignment, path, value):
    assert text.assignment(assignment) == (path, value)


def test_set_refuses_what_is_no_assignment_or_descends_into_a_setting():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        text.assignment("train.steps")
    with pytest.raises(ConfigError, match="train.steps is a setting, not a table"):
        text.assign(to_dict(LNetConfig()), ["train.steps.x=1"])


def test_a_file_then_set_then_flags_change_the_preset(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text("[train]\nlearning_rate = 5e-4\nsteps = 7\n\n[data]\nimage_size = 96\n")
    config = networks.resolve(
        "snet",
        "tiny",
        mine,
        ["train.steps=9", "data.affine.rotation_deg=10"],
        {"train": {"steps": 11}, "synthesis": True},
    )
    assert (config.train.learning_rate, config.train.steps, config.data.image_size) == (5e-4, 11, 96)
    assert config.data.affine.rotation_deg == 10.0 and config.synthesis
    assert config.train.batch_size == networks.preset("snet", "tiny").train.batch_size  # left out: the preset's
    assert networks.resolve("snet", "paper", mine).train.batch_size == 10  # a nested default, not the class's 4
    with pytest.raises(ConfigError, match=f"{mine}: train.steps: expected an integer"):
        mine.write_text("[train]\nsteps = 'many'\n")
        networks.resolve("snet", "tiny", mine)
    with pytest.raises(ConfigError, match=f"{mine}: not valid TOML"):
        mine.write_text("[train\n")
        networks.resolve("snet", "tiny", mine)
    with pytest.raises(ConfigError, match="--set: data.image_size: expected an integer, got 'big'"):
        networks.resolve("snet", "tiny", assignments=["data.image_size=big"])


def test_the_heat_map_settings_are_the_runs_changed_by_set_and_options():
    config = networks.preset("snet", "tiny")
    settings = explain.explain_settings(config, ["explain.stride_px=8", "explain.patch_px=32"], chunk=4, occlusion=None)
    assert (settings.stride_px, settings.patch_px, settings.chunk, settings.occlusion) == (8, 32, 4, "replace")
    with pytest.raises(ConfigError, match="explain.\\* settings only"):
        explain.explain_settings(config, ["train.steps=3"])
    # the paper's patch 64 / stride 16 / fade 16 at 512 px, scaled as before the settings existed
    scaled = {size: explain.scaled_config(size) for size in (64, 256, 512)}
    assert [(c.patch, c.stride, c.fade) for c in scaled.values()] == [(8, 2, 2), (32, 8, 8), (64, 16, 16)]


def test_ssc_train_resolves_file_set_and_flags_and_stores_them(monkeypatch, capsys, cohort, tmp_path):
    seen = {}

    def fake_train(config, workdir, run_dir, **options):
        seen[config.fold] = config
        return type("Result", (), {"best_mae": 1.0, "best_step": 5, "stopped_early": False, "step": 5})()

    monkeypatch.setattr(networks.Network, "train", lambda self, *args, **options: fake_train(*args, **options))
    tiny = networks.preset_file("lnet", "tiny")
    code, out, err = ssc(
        monkeypatch,
        capsys,
        "train",
        "lnet",
        "--config",
        tiny,
        "--set",
        "train.steps=5",
        "--set",
        "data.crop=60",
        "--data",
        cohort,
        "--fold",
        "all",
        "--workdir",
        tmp_path,
    )
    assert code == 0, err
    assert sorted(seen) == [0, 1, 2, 3]
    expected = networks.with_changes(
        networks.preset("lnet", "tiny", data_dir=str(cohort.resolve())), ["train.steps=5", "data.crop=60"]
    )
    assert seen[2] == dataclasses.replace(expected, fold=2)
    code, out, err = ssc(
        monkeypatch,
        capsys,
        "train",
        "lnet",
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--bf16",
        "--set",
        "train.steps=9",
        "--data",
        cohort,
        "--show-config",
    )
    assert code == 0, err
    shown = from_dict(LNetConfig, tomllib.loads(out))
    assert (shown.train.steps, shown.train.compute_dtype, shown.data_dir) == (3, "bfloat16", str(cohort.resolve()))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "train.learnin_rate=1e-3"], "train.learnin_rate: unknown setting"),
        (["--set", "data.crop=wide"], "data.crop: expected an integer, got 'wide'"),
        (["--set", "train.steps"], "expected key.path=value"),
    ],
)
def test_ssc_train_refuses_a_wrong_setting_in_one_line_with_exit_code_2(monkeypatch, capsys, args, message):
    code, out, err = ssc(monkeypatch, capsys, "train", "lnet", "--preset", "tiny", *args, "--show-config")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out


def test_random_weights_take_the_presets_scratch_settings_and_set_still_wins():
    small = networks.preset("snet", "small")
    assert small.scratch and small.balanced and small.model.kwargs["normalize_input"]
    imagenet = networks.resolve("snet", "small", overrides={"pretrained": "/weights/convnext_tiny.pth"})
    assert imagenet.balanced and imagenet.model.kwargs["normalize_input"] and imagenet.train.learning_rate == 2e-4
    scratch = networks.resolve("snet", "small", overrides={"pretrained": "none"})
    assert networks.scratch_settings(scratch) == small.scratch and networks.scratch_settings(imagenet) == ()
    assert not scratch.balanced and not scratch.model.kwargs["normalize_input"]
    assert scratch.model.kwargs["input_norm"] == [[0.2667], [0.1]] and scratch.train.learning_rate == 1e-3
    assert scratch.train.steps == small.train.steps and scratch.synthesis  # what scratch leaves alone
    mine = networks.resolve(
        "snet", "small", assignments=["train.learning_rate=5e-4"], overrides={"pretrained": "none", "balanced": True}
    )
    assert mine.train.learning_rate == 5e-4 and mine.balanced and not mine.model.kwargs["normalize_input"]
    assert networks.scratch_settings(networks.resolve("snet", "paper", overrides={"pretrained": "none"})) == ()


@pytest.mark.parametrize(
    "scratch,message",
    [
        (["pretrained=efficientnet_lite0"], "cannot change pretrained or scratch itself"),
        (["train.learning_rate=fast"], "scratch"),
    ],
)
def test_bad_scratch_settings_are_refused_naming_them(scratch, message):
    with pytest.raises(ConfigError, match=message):
        networks.resolve("snet", "small", assignments=[f"scratch={scratch}"], overrides={"pretrained": "none"})
