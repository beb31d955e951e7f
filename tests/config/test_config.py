from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml

from config_kit import assert_keeps
from trainpipe import config
from trainpipe.config import load
from trainpipe.config.types import ComponentList, ComponentName
from trainpipe.errors import ConfigError


def test_default_is_the_packaged_quickstart() -> None:
    cfg = load()
    assert cfg.name == "quickstart"
    assert cfg.data.dataset == "digits" and cfg.model.name == "cnn_small"
    assert cfg.optim.name == "sgd" and cfg.optim.options()["nesterov"] is True
    assert cfg.sched.name == "cosine"
    assert cfg.train.monitor == "val/acc" and cfg.train.monitor_mode == "max"


def test_overrides_parse_yaml_values() -> None:
    cfg = load(None, ["optim.lr=0.1", "train.epochs=3", "data.augment=[hflip]", "optim.nesterov=false",
                      "train.ema.decay=0.99", "name=abc"])
    assert cfg.optim.lr == 0.1 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3
    assert cfg.data.augment == [{"name": "hflip", "p": 0.5}]  # every option resolved
    assert cfg.optim.options()["nesterov"] is False
    assert cfg.train.ema is not None and cfg.train.ema.decay == 0.99
    assert cfg.name == "abc"


def test_dict_overrides_and_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "train": {"epochs": 4}}))
    cfg = load(p, {"optim.lr": 0.2})
    assert (cfg.name, cfg.train.epochs, cfg.optim.lr) == ("x", 4, 0.2)


def test_component_options_get_defaults_filled_in() -> None:
    cfg = load(None, [])
    opts = cfg.model.options()
    assert "width" in opts  # a default of cnn_small, written into the resolved config
    assert cfg.to_dict()["model"]["width"] == opts["width"]


def test_config_is_frozen() -> None:
    cfg = load()
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load(None, ["optim.lr=0.3", "train.ema.decay=0.9"])
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load(p) == cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=1", "optim.lrr: unknown key for sgd; did you mean optim.lr?"),
        ("data.batchsize=3", "did you mean data.batch_size?"),
        ("model.widht=3", "model.widht: unknown key for cnn_small; did you mean model.width?"),
        ("trian.epochs=3", "trian: unknown key; did you mean train?"),
        ("train.epochs=ten", "train.epochs: input should be a valid integer"),
        ("data.batch_size=0", "data.batch_size: input should be greater than 0"),
        ("optim.lr=-1", "optim.lr: input should be greater than 0"),
        ("model.name=cnn_smal", "model.name: unknown model 'cnn_smal'; did you mean cnn_small?"),
        ("optim.name=sdg", "optim.name: unknown optimizer 'sdg'; did you mean sgd?"),
        ("train.device=gpu", "train.device: device must be auto, cpu, cuda, cuda:N or mps; got 'gpu'"),
        ("train.precision=fp8", "train.precision: input should be 'auto', 'fp32', 'bf16' or 'fp16'"),
        ("data.val_split=1.5", "data.val_split: val_split must be a fraction"),
        ("optim.momentum=fast", "optim.momentum: input should be a valid number"),
    ],
)
def test_bad_values_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(None, [override])
    assert expected in str(e.value)


def test_malformed_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load(None, ["epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load(scalar)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(p)


def test_packaged_config_by_name() -> None:
    assert config.resolve_config_path("quickstart").name == "quickstart.yaml"
    assert load("quickstart").name == "quickstart"


PACKAGED = [p for p in sorted(config.PACKAGED_CONFIGS.glob("*.yaml"))
            if not {"parameters", "method"} & set(yaml.safe_load(p.read_text()))]  # sweeps: the sweep tests


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.stem)
def test_every_packaged_config_loads_with_the_values_it_sets(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    cfg = load(path)
    assert cfg.name == data.get("name", path.stem)
    assert_keeps(data, cfg.to_dict(), where=path.name)  # nothing the file sets is dropped or changed
    assert load(path.stem).to_dict() == cfg.to_dict()  # by name, as `trainpipe train cifar10` finds it


def test_switching_a_component_by_override_drops_its_old_options() -> None:
    # quickstart sets optim.momentum/nesterov for sgd; a sweep over optim.name must still work
    cfg = load(None, ["optim.name=adamw"])
    assert "momentum" not in cfg.optim.options() and "betas" in cfg.optim.options()
    cfg = load(None, ["optim.name=lion"])  # any timm optimizer: only its own options remain
    assert cfg.optim.options() == {}
    cfg = load(None, ["optim.name=sam", "optim.rho=0.1"])
    assert cfg.optim.options()["rho"] == 0.1 and cfg.optim.lr == 0.05  # section keys stay
    # an option given explicitly for the new component is still checked
    with pytest.raises(ConfigError, match="optim.momentum: unknown key for adamw"):
        load(None, ["optim.name=adamw", "optim.momentum=0.5"])


@pytest.mark.parametrize("override, key", [
    (["optim.name=sam", "train.precision=fp16"], "train.precision: fp16 cannot be combined"),
    (["optim.name=sam", "train.grad_accum_steps=2"], "train.grad_accum_steps: SAM"),
])
def test_incompatible_combinations_are_refused(override: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load(None, override)


@pytest.mark.parametrize("overrides,named", [
    ({"model.name": "mlp", "model.dropout": 1.0}, "model.dropout: input should be less than 1"),
    ({"model.name": "mlp", "model.widths": [32, 0]}, "model.widths[1]: input should be greater than 0"),
    ({"model.name": "mlp", "model.depth": -1}, "model.depth: input should be greater than or equal to 0"),
    ({"model.name": "wide_resnet", "model.depth": 12}, "model.depth: wide_resnet needs depth = 6n + 4"),
    ({"model.name": "wide_resnet", "model.widen_factor": 0}, "model.widen_factor: input should be greater than 0"),
    ({"model.name": "speednet", "model.widths": []}, "model.widths: list should have at least 1 item"),
    ({"model.name": "cnn_small", "model.width": 0}, "model.width: input should be greater than 0"),
    ({"model.name": "timm", "model.drop_rate": 1.5}, "model.drop_rate: input should be less than 1"),
    ({"data.test_split": 1.0}, "data.test_split: input should be less than 1"),
    ({"data.dataset": "frames", "data.context": -1, "model.name": "mlp"},
     "data.context: input should be greater than or equal to 0"),
])
def test_model_and_dataset_options_are_checked_by_config_load(overrides: dict, named: str) -> None:
    # The builders no longer check these: config.load refuses them before any data is read.
    with pytest.raises(ConfigError) as e:
        load(None, overrides)
    msg = str(e.value)
    assert msg.startswith(named), msg
    key = named.split(":")[0].split("[")[0]
    assert msg.endswith(f"override it with {key}=VALUE."), msg  # a list is overridden whole


_SEEN: list[list[dict[str, Any]]] = []


def _record(members: list[dict[str, Any]], cfg: Any) -> None:
    _SEEN.append(members)


def test_a_component_that_holds_others_is_checked_from_its_signature_alone() -> None:
    # A new wrapper (a lookahead around any optimizer) and a list of schedules, declared only
    # by the types of their options: config.load checks what they name like any component.
    from trainpipe.registry import OPTIMIZERS, SCHEDULERS

    @OPTIMIZERS.register("lookahead_test")
    def lookahead(groups: list, /, *, base: Annotated[str, ComponentName("optimizer", options="base_options")] = "sgd",
                  base_options: dict | None = None, k: int = 5) -> Any:
        """Test wrapper."""

    @SCHEDULERS.register("sequence_test")
    def sequence(h: Any, /, *, parts: Annotated[list[dict[str, Any]], ComponentList(
            "scheduler", member_keys=("epochs",), check=_record)] = []) -> Any:
        """Test list."""

    try:
        cfg = load(None, {"optim.name": "lookahead_test", "optim.base": "adamw",
                          "optim.base_options": {"betas": [0.8, 0.9]}})
        assert cfg.optim.options()["base_options"] == {"betas": [0.8, 0.9], "eps": 1e-8, "amsgrad": False}
        with pytest.raises(ConfigError, match=r"optim\.base: unknown optimizer 'adamx'; did you mean adam"):
            load(None, {"optim.name": "lookahead_test", "optim.base": "adamx"})
        with pytest.raises(ConfigError, match=r"optim\.base_options\.momentum: unknown key"):
            load(None, {"optim.name": "lookahead_test", "optim.base": "adamw", "optim.base_options": {"momentum": 1}})
        with pytest.raises(ConfigError, match=r"optim\.base: lookahead_test cannot wrap itself.*optim\.base=sgd"):
            load(None, {"optim.name": "lookahead_test", "optim.base": "lookahead_test"})
        cfg = load(None, {"sched.name": "sequence_test", "sched.parts": [{"name": "step", "epochs": 3}]})
        assert cfg.sched.options()["parts"] == [{"name": "step", "step_size": 30, "gamma": 0.1, "epochs": 3}]
        assert _SEEN[-1] == cfg.sched.options()["parts"]  # the list's own check saw the completed members
        with pytest.raises(ConfigError, match=r"sched\.parts\[0\]\.gama: unknown key.*gamma"):
            load(None, {"sched.name": "sequence_test", "sched.parts": [{"name": "step", "gama": 0.5}]})
    finally:
        del OPTIMIZERS._entries["lookahead_test"], SCHEDULERS._entries["sequence_test"]
