"""Config: typed overrides, loud failures on typos and wrong types."""

import pytest

from train.cli import parse_train_args
from train.config import ConfigError, ModelConfig, SparsityConfig, TrainConfig, load_config


def test_dotted_overrides_are_typed():
    config = load_config(
        overrides=[
            "sparsity.density=0.2",
            "optim.lr=5e-3",
            "run.epochs=7",
            "data.threshold=4",
            "data.ratios=0.7,0.2,0.1",
        ]
    )
    assert config.sparsity.density == 0.2 and config.optim.lr == 5e-3 and config.run.epochs == 7
    assert config.data.threshold == 4.0 and config.data.ratios == (0.7, 0.2, 0.1)
    assert load_config(overrides=["data.threshold=none"]).data.threshold is None


@pytest.mark.parametrize(
    "override, words",
    [
        ("sparsity.densty=0.2", "sparsity.densty"),
        ("run.epochs=ten", "run.epochs"),
        ("nosuch.key=1", "nosuch"),
        ("optim.lr", "section.key=value"),
    ],
)
def test_bad_overrides_fail_loudly(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        load_config(overrides=[override])


def test_round_trip_through_dict():
    config = load_config(overrides=["sparsity.updater=set", "model.name=mf"])
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_cli_top_flags_and_overrides(tmp_path):
    config, _ = parse_train_args(
        [
            "--data",
            "ml-100k",
            "--model",
            "mf",
            "--out",
            str(tmp_path),
            "--epochs",
            "3",
            "--seed",
            "7",
            "--sparsity.density=0.5",
            "--optim.lr",
            "0.01",
        ]
    )
    assert (config.data.name, config.model.name, config.run.out) == ("ml-100k", "mf", str(tmp_path))
    assert (config.run.epochs, config.run.seed, config.sparsity.density, config.optim.lr) == (3, 7, 0.5, 0.01)


def test_cli_rejects_typo(capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--sparsity.densty=0.2"])
    assert "densty" in capsys.readouterr().err


def test_yaml_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model:\n  name: mf\n  dim: 32\nsparsity:\n  density: 0.1\n")
    config = load_config(preset, ["model.dim=16"])
    assert (config.model.name, config.model.dim, config.sparsity.density) == ("mf", 16, 0.1)


def test_data_columns_is_typed_in_every_form(tmp_path):
    from train.config import ColumnsConfig

    want = ColumnsConfig(user="userId", item="2")
    assert load_config(overrides=["data.columns=user=userId,item=2"]).data.columns == want
    assert load_config(overrides=["data.columns.user=userId", "data.columns.item=2"]).data.columns == want
    preset = tmp_path / "p.yaml"
    preset.write_text("data:\n  columns:\n    user: userId\n    item: 2\n")
    assert load_config(preset).data.columns == want
    config, _ = parse_train_args(["--data.columns", "user=userId,item=2"])
    assert config.data.columns == want and str(want) == "user=userId,item=2"
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"data": {"name": "x"}}).data.columns == ColumnsConfig()  # older configs
    with pytest.raises(ConfigError, match=r"data\.columns\.rank"):
        load_config(overrides=["data.columns=rank=1"])


def test_help_shows_data_columns(capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--help"])
    assert "--data.columns=user=COL,item=COL,rating=COL,timestamp=COL" in capsys.readouterr().out


@pytest.mark.parametrize(
    "density, updater, dense, small_dense, prunes, has_mask, masked, label, width",
    [
        (1.0, "dsl", True, False, False, False, False, "dense", 64),
        (1.0, "small-dense", True, False, False, False, False, "dense", 64),
        (1.0, "prune-finetune", True, False, False, False, False, "dense", 64),
        (0.2, "dsl", False, False, False, True, True, "dsl", 64),
        (0.2, "dsl-nested", False, False, False, True, True, "dsl-nested", 64),
        (0.2, "static", False, False, False, True, True, "static", 64),
        (0.2, "prune-finetune", False, False, True, True, False, "prune-finetune", 64),
        (0.2, "small-dense", False, True, False, False, False, "small-dense", 13),  # round(0.2 x 64)
        (0.001, "small-dense", False, True, False, False, False, "small-dense", 1),  # never narrower than 1
    ],
)
def test_sparsity_config_decides_masked_and_width_in_one_place(
    density, updater, dense, small_dense, prunes, has_mask, masked, label, width
):
    sparsity = SparsityConfig(density=density, updater=updater)
    assert (sparsity.dense, sparsity.small_dense, sparsity.prunes, sparsity.has_mask, sparsity.masked) == (
        dense,
        small_dense,
        prunes,
        has_mask,
        masked,
    )
    assert sparsity.label == label and sparsity.width(64) == width
    config = TrainConfig(model=ModelConfig(dim=64), sparsity=sparsity)
    assert config.width == width
