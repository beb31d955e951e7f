"""YAML a user gives trainpipe (config files, sweep files, override values) that cannot be read
as a config is refused with one message naming the file and the fix: exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainpipe.cli import main
from trainpipe.config import load, yamlfile
from trainpipe.errors import ConfigError
from trainpipe.sweep.spec import load_spec


def _bomb(levels: int, fan: int = 10) -> str:
    """A 'billion laughs' document: `levels` anchors, each listing the previous one `fan` times,
    so that it expands to fan**levels values."""
    lines = ["l0: &l0 [" + ", ".join(["x"] * fan) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


def _refused(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]) -> str:
    """The message `trainpipe train FILE` gives (exit 2, no traceback), with no run directory made."""
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "run"
    assert main(["train", str(p), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists()
    return err


def test_binary_file_is_not_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), capsys)
    assert "c.yaml" in err and "not a text file" in err


def test_directory_is_not_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "configs"
    d.mkdir()
    (d / "mnist.yaml").write_text("train: {epochs: 1}\n")
    assert main(["check", str(d)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "mnist.yaml" in err  # names what it holds


@pytest.mark.parametrize("text, anchor", [
    ("a: &a [*a]\n", "&a"),
    ("train: &t\n  epochs: 1\n  again: *t\n", "&t"),
    ("x: &m\n  <<: *m\n", "&m"),  # a merge key that merges itself
])
def test_recursive_anchor_is_named(tmp_path: Path, text: str, anchor: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, text, capsys)
    assert anchor in err and "alias to itself" in err


def test_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 10**30 values: no code that expands it finishes; the refusal comes from the composed
    # graph, before any Python object is built.
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb(30))
    monkeypatch.setattr(yamlfile._Loader, "construct_document",
                        lambda self, node: pytest.fail("the document was constructed"))
    with pytest.raises(ConfigError, match=r"bomb.yaml.*aliases.*expand to more than 100,000 values"):
        load(p)


def test_alias_bomb_command_returns(tmp_path: Path) -> None:
    """The command line, in a process of its own: it returns exit 2 (a limit on the wait only
    catches a hang; the refusal itself takes a fraction of a second)."""
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb(30))
    r = subprocess.run([sys.executable, "-m", "trainpipe", "check", str(p)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "aliases" in r.stderr and "Traceback" not in r.stderr


def test_aliases_within_the_limit_are_read(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("data: {batch_size: &bs 32, eval_batch_size: *bs}\n")
    cfg = load(p)
    assert (cfg.data.batch_size, cfg.data.eval_batch_size) == (32, 32)


def test_too_many_values_without_aliases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, "x: [" + "1," * (yamlfile.MAX_VALUES + 1) + "1]\n", capsys)
    assert "holds more than 100,000 values" in err and "aliases" not in err


def test_file_over_the_size_limit_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, "# " + "x" * yamlfile.MAX_FILE_BYTES + "\n", capsys)
    assert "larger than 2 MiB" in err


@pytest.mark.parametrize("text, key, lines", [
    ("train:\n  epochs: 1\n  epochs: 2\n", "train.epochs", "lines 2 and 3"),
    ("seed: 1\noptim: {lr: 0.1}\nseed: 2\n", "seed", "lines 1 and 3"),
    ("train:\n  ema: {decay: 0.9, decay: 0.8}\n", "train.ema.decay", "lines 2 and 2"),
])
def test_duplicate_key_is_named_with_its_lines(tmp_path: Path, text: str, key: str, lines: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, text, capsys)
    assert f"the key {key} is given twice ({lines})" in err


def test_merge_key_may_be_overridden(tmp_path: Path) -> None:
    """`<<: *base` followed by one of base's keys is YAML's way to override, not a duplicate."""
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  <<: {epochs: 1, log_every: 5}\n  epochs: 3\n")
    cfg = load(p)
    assert (cfg.train.epochs, cfg.train.log_every) == (3, 5)


def test_dotted_keys_in_a_file_are_nested(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train.epochs: 3\noptim.lr: 0.2\ntrain:\n  checkpoint.every: 2\n  log_every: 7\n")
    cfg = load(p)
    assert (cfg.train.epochs, cfg.optim.lr, cfg.train.checkpoint.every, cfg.train.log_every) == (3, 0.2, 2, 7)
    assert load(p, ["train.epochs=5"]).train.epochs == 5  # an override still wins


def test_dotted_key_set_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(tmp_path, "train:\n  epochs: 2\ntrain.epochs: 1\n", capsys)
    assert "train.epochs: is set twice" in err


def test_sweep_file_is_read_by_the_same_rules(tmp_path: Path) -> None:
    p = tmp_path / "sweep.yaml"
    p.write_text("method: grid\nmetric: {name: val/acc, goal: maximize}\nparameters:\n"
                 "  optim.lr: {values: [0.1, 0.2]}\n  optim.lr: {values: [0.3]}\n")
    with pytest.raises(ConfigError, match=r"sweep file .*the key parameters\.optim\.lr is given twice \(lines 4 and 5\)"):
        load_spec(p)
    p.write_text(_bomb(12))
    with pytest.raises(ConfigError, match="sweep file .*aliases"):
        load_spec(p)


def test_override_value_is_read_by_the_same_rules() -> None:
    with pytest.raises(ConfigError, match=r"override data\.augment: the anchor &a .*alias to itself"):
        load(None, ["data.augment=&a [*a]"])
    with pytest.raises(ConfigError, match=r"override model\.x: the key a is given twice"):
        load(None, ["model.x={a: 1, a: 2}"])
