"""Models: every registered name trains, heads can be swapped, weights transfer, inputs resize."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError
from trainpipe.models import build, model_stats
from trainpipe.models.mlp import hidden_widths
from trainpipe.models.wrap import head_modules, head_prefixes, is_head_key
from trainpipe.registry import MODELS

IMAGE = DataSpec(in_shape=(3, 16, 16), num_classes=5)
# Tiny variants keep every net fast on a CPU; the architecture is unchanged.
SMALL_OPTIONS: dict[str, dict] = {
    "resnet18_cifar": {"width": 8},
    "preact_resnet18": {"width": 8},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
    "mlp": {"widths": [32, 16], "norm": "batch"},
    "speednet": {"widths": [8, 16, 16], "stem_width": 8},
    "timm": {"arch": "resnet18"},
    "torchvision": {"arch": "resnet18"},
    "cnn_small": {"width": 8},
}
# Libraries' own nets are checked elsewhere for torch.compile; ours must trace whole.
OUR_NETS = [n for n in MODELS.names() if n not in ("timm", "torchvision")]


def small_model(name: str, spec: DataSpec = IMAGE, **kw) -> nn.Module:
    return build(name, SMALL_OPTIONS.get(name, {}), spec, **kw)


def fixed_batch(spec: DataSpec, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *spec.in_shape, generator=g)
    y = torch.arange(n) % spec.num_classes
    return x, y


# ------------------------------------------------------------------ every name
@pytest.mark.parametrize("name", MODELS.names())
def test_model_trains_on_a_fixed_batch(name: str) -> None:
    torch.manual_seed(0)
    model = small_model(name)
    x, y = fixed_batch(IMAGE)
    out = model(x)
    assert out.shape == (4, IMAGE.num_classes)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.zero_grad()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", MODELS.names())
def test_model_takes_channels_last_under_autocast(name: str) -> None:
    model = small_model(name).eval()
    x, _ = fixed_batch(IMAGE)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (4, IMAGE.num_classes)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", OUR_NETS)
def test_model_compiles_as_one_graph(name: str) -> None:
    model = small_model(name, input_size=20)
    x, _ = fixed_batch(IMAGE)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fails on any graph break
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("name", MODELS.names())
def test_head_protocol(name: str) -> None:
    model = small_model(name)
    (head,) = head_modules(model)
    assert any(p is q for p in head.parameters() for q in model.parameters())
    model.reset_classifier(3)
    x, _ = fixed_batch(IMAGE)
    assert model(x).shape == (4, 3)
    assert model.get_classifier() is not head


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n != "mlp"])
def test_image_nets_reject_vector_data(name: str) -> None:
    with pytest.raises(ConfigError, match="model.name"):
        small_model(name, DataSpec(in_shape=(20,), num_classes=3))


# -------------------------------------------------------------------------- mlp
@pytest.mark.parametrize(
    ("depth", "shape", "expected"),
    [
        (3, "constant", [64, 64, 64]),
        (4, "pyramid", [64, 32, 16, 8]),
        (5, "diamond", [16, 32, 64, 32, 16]),
        (4, "diamond", [32, 64, 64, 32]),
        (5, "hourglass", [64, 32, 16, 32, 64]),
        (4, "hourglass", [64, 32, 32, 64]),
        (0, "diamond", []),
    ],
)
def test_mlp_shapes(depth: int, shape: str, expected: list[int]) -> None:
    assert hidden_widths(depth, 64, shape) == expected
    model = build("mlp", {"depth": depth, "width": 64, "shape": shape}, DataSpec((10,), 3))
    linears = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [*expected, 3]


def test_mlp_explicit_widths_norms_and_dropout() -> None:
    spec = DataSpec((1, 8, 8), 4)
    model = build("mlp", {"widths": [20, 10], "norm": "layer", "dropout": 0.5, "activation": "gelu"}, spec)
    kinds = [type(m).__name__ for m in model.body]
    assert kinds == ["Flatten", "Linear", "LayerNorm", "GELU", "Dropout", "Linear", "LayerNorm", "GELU", "Dropout"]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_mlp_init_sets_the_weight_scale() -> None:
    spec = DataSpec((512,), 10)
    torch.manual_seed(0)
    kaiming = build("mlp", {"widths": [512], "init": "kaiming_normal"}, spec)
    xavier = build("mlp", {"widths": [512], "init": "xavier_normal"}, spec)
    # He: var = 2 / fan_in for ReLU; Glorot with ReLU gain: var = 2 * 2 / (fan_in + fan_out).
    assert kaiming.body[1].weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert xavier.body[1].weight.std().item() == pytest.approx(math.sqrt(4 / 1024), rel=0.05)
    assert kaiming.head.weight.std().item() == pytest.approx(math.sqrt(1 / 512), rel=0.1)
    assert torch.count_nonzero(kaiming.body[1].bias) == 0


# ------------------------------------------------------------ timm, torchvision
@pytest.mark.parametrize("channels", [1, 3])
def test_timm_sets_channels_and_classes(channels: int) -> None:
    spec = DataSpec((channels, 32, 32), 7)
    model = build("timm", {"arch": "resnet18"}, spec)
    assert model.conv1.in_channels == channels
    assert model.get_classifier().out_features == 7
    assert model(torch.randn(2, channels, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize(("arch", "head_type"), [("squeezenet1_1", nn.Conv2d), ("mobilenet_v3_small", nn.Linear)])
@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_sets_channels_and_classes(arch: str, head_type: type, channels: int) -> None:
    spec = DataSpec((channels, 64, 64), 7)
    model = build("torchvision", {"arch": arch}, spec).eval()
    head = model.get_classifier()
    assert isinstance(head, head_type)
    assert (head.out_channels if head_type is nn.Conv2d else head.out_features) == 7
    assert model(torch.randn(2, channels, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("name", ["timm", "torchvision"])
def test_unknown_arch_suggests_the_closest(name: str) -> None:
    with pytest.raises(ConfigError, match=r"model\.arch: .*'resnet81'.*did you mean resnet18\?"):
        build(name, {"arch": "resnet81"}, IMAGE)


def test_pretrained_download_failure_is_a_config_error() -> None:
    try:
        model = build("torchvision", {"arch": "squeezenet1_1"}, IMAGE, pretrained=True)
    except ConfigError as e:
        msg = str(e)
        assert "model.pretrained" in msg and "model.weights" in msg and "internet" in msg
    else:  # online with the weights in reach: the download path worked instead
        assert model.get_classifier().out_channels == IMAGE.num_classes
        pytest.skip("pretrained weights could be downloaded, so the offline error was not exercised")


def test_pretrained_on_a_net_without_published_weights() -> None:
    with pytest.raises(ConfigError, match="model.pretrained: lenet .*model.weights"):
        build("lenet", {}, IMAGE, pretrained=True)


# --------------------------------------------------------------------- weights
def test_checkpoint_of_another_run_replaces_only_the_head(tmp_path) -> None:
    torch.manual_seed(0)
    source = small_model("resnet18_cifar", DataSpec((3, 16, 16), 10))
    path = tmp_path / "best.pt"
    torch.save({"model": source.state_dict(), "config": {"model": {"name": "resnet18_cifar"}}}, path)

    torch.manual_seed(1)
    target = small_model("resnet18_cifar", DataSpec((3, 16, 16), 5), weights=str(path))
    src, dst = source.state_dict(), target.state_dict()
    assert src.keys() == dst.keys()
    for key in src:
        if key.startswith("head."):
            assert dst[key].shape[0] == 5 and src[key].shape[0] == 10
        else:
            assert torch.equal(src[key], dst[key]), key


def test_same_class_count_loads_the_head_too(tmp_path) -> None:
    source = small_model("lenet")
    path = tmp_path / "lenet.pt"
    torch.save(source.state_dict(), path)
    target = small_model("lenet", weights=path)
    x, _ = fixed_batch(IMAGE)
    torch.testing.assert_close(target(x), source(x))


@pytest.mark.parametrize("name", ["timm", "torchvision"])
def test_library_state_dict_loads_with_a_new_head(tmp_path, name: str) -> None:
    import timm
    import torchvision

    # A file as the library itself writes it: no trainpipe prefixes, 1000 classes.
    if name == "timm":
        plain = timm.create_model("resnet18", num_classes=1000)
    else:
        plain = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(plain.state_dict(), path)
    model = build(name, {"arch": "resnet18"}, IMAGE, weights=path)
    ours = {k.removeprefix("net."): v for k, v in model.state_dict().items()}
    theirs = plain.state_dict()
    assert torch.equal(ours["layer4.1.conv2.weight"], theirs["layer4.1.conv2.weight"])
    assert ours["fc.weight"].shape == (5, 512)


def test_weights_with_a_different_body_are_rejected(tmp_path) -> None:
    path = tmp_path / "wide.pt"
    torch.save({"model": small_model("resnet18_cifar").state_dict(), "config": {}}, path)
    with pytest.raises(ConfigError) as info:
        build("resnet18_cifar", {"width": 16}, IMAGE, weights=path)
    msg = str(info.value)
    assert "model.weights" in msg and str(path) in msg
    assert "'stem.0.weight'" in msg and "(8, 3, 3, 3)" in msg and "(16, 3, 3, 3)" in msg


def test_weights_of_another_architecture_are_rejected(tmp_path) -> None:
    path = tmp_path / "lenet.pt"
    torch.save(small_model("lenet").state_dict(), path)
    with pytest.raises(ConfigError, match="model.weights: .*different architecture"):
        small_model("speednet", weights=path)


def test_missing_weights_file(tmp_path) -> None:
    path = tmp_path / "nowhere" / "best.pt"
    with pytest.raises(ConfigError, match=rf"model\.weights: no file at {path}"):
        small_model("lenet", weights=str(path))


def test_unreadable_weights_file(tmp_path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("not a tensor file")
    with pytest.raises(ConfigError, match="model.weights: .*could not be read"):
        small_model("lenet", weights=path)


# ------------------------------------------------------------------ input size
def test_input_size_resizes_inside_the_model() -> None:
    torch.manual_seed(0)
    resized = build("lenet", {}, IMAGE, input_size=32)
    plain = build("lenet", {}, DataSpec((3, 32, 32), IMAGE.num_classes))
    assert resized.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(resized.state_dict())
    x, _ = fixed_batch(IMAGE)
    expected = plain(F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))
    torch.testing.assert_close(resized(x), expected)
    # Inputs already at the target size pass through untouched.
    big = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(resized(big), plain(big))
    assert resized.get_classifier() is resized.head
    # The cost is that of the net at the size it sees.
    plain_spec = DataSpec((3, 32, 32), IMAGE.num_classes)
    assert model_stats(resized, IMAGE)["macs_per_image"] == model_stats(plain, plain_spec)["macs_per_image"]


def test_input_size_needs_images() -> None:
    with pytest.raises(ConfigError, match="model.input_size"):
        build("mlp", {}, DataSpec((10,), 2), input_size=32)


# ---------------------------------------------------------------------- freeze
@pytest.mark.parametrize("name", ["resnet18_cifar", "mlp", "torchvision"])
def test_freeze_backbone_trains_only_the_head(name: str) -> None:
    model = small_model(name, freeze="backbone")
    head_params = {id(p) for h in head_modules(model) for p in h.parameters()}
    assert head_params
    for p in model.parameters():
        assert p.requires_grad == (id(p) in head_params)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = fixed_batch(IMAGE)
    model.train()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    after = model.state_dict()
    heads = head_prefixes(model)
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    # Only the head moves: backbone weights and batch-norm statistics stay as they were.
    assert changed and all(is_head_key(k, heads) for k in changed), changed
    assert any(k.endswith("weight") for k in changed)


# ----------------------------------------------------------------- model stats
def test_model_stats_hand_count() -> None:
    spec = DataSpec((4,), 3)
    model = build("mlp", {"widths": [5]}, spec)
    # 4 -> 5 -> 3: weights 4*5 + 5*3 = 35 MACs per sample, plus 5 + 3 biases.
    assert model_stats(model, spec) == {"params": 43, "trainable_params": 43, "macs_per_image": 35}


def test_model_stats_leaves_the_model_alone() -> None:
    model = small_model("resnet18_cifar", freeze="none").train()
    model.stages.eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = model_stats(model, IMAGE)
    assert model.training and not model.stages.training and model.stem.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert stats["params"] == stats["trainable_params"] > 0 and stats["macs_per_image"] > 0

    frozen = small_model("resnet18_cifar", freeze="backbone")
    frozen_stats = model_stats(frozen, IMAGE)
    assert frozen_stats["params"] == stats["params"]
    assert frozen_stats["trainable_params"] == 64 * 5 + 5  # the head: 64 features -> 5 classes


def test_a_model_that_cannot_run_on_the_data_is_a_config_error_before_anything_is_written(
        tmp_path, capsys: pytest.CaptureFixture) -> None:
    from trainpipe.cli import main

    # Resized to 1x1 inside the model, the input is too small for cnn_small's poolings.
    model = build("cnn_small", {"width": 8}, DataSpec((1, 8, 8), 10), input_size=1)
    with pytest.raises(ConfigError, match=r"cannot run on this data's inputs of shape \(1, 8, 8\).*Output size is too small"):
        model_stats(model, DataSpec((1, 8, 8), 10))
    out = tmp_path / "run"
    assert main(["train", "model.input_size=1", "model.width=8", "train.epochs=1", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model.input_size" in err and "Traceback" not in err
    assert not out.exists()  # nothing is left of a run that never started


# Backward functions that torch documents as having no deterministic CUDA kernel (they raise
# under `train.deterministic`, see torch.use_deterministic_algorithms): adaptive pooling to
# more than one pixel (to one pixel, torch computes a mean), 3-d pooling, interpolation, ...
NONDETERMINISTIC_ON_CUDA = {
    "AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0", "AdaptiveMaxPool2DBackward0",
    "AdaptiveMaxPool3DBackward0", "AvgPool3DBackward0", "FractionalMaxPool2DBackward0",
    "FractionalMaxPool3DBackward0", "MaxUnpool2DBackward0", "MaxUnpool3DBackward0",
    "UpsampleLinear1DBackward0", "UpsampleBilinear2DBackward0", "UpsampleBicubic2DBackward0",
    "UpsampleTrilinear3DBackward0", "ReflectionPad1DBackward0", "ReflectionPad2DBackward0",
    "ReflectionPad3DBackward0", "GridSampler2DBackward0", "GridSampler3DBackward0", "NllLoss2DBackward0",
    "EmbeddingBagBackward0", "CtcLossBackward0", "ReplicationPad1DBackward0",
}


def _backward_functions(out: torch.Tensor) -> set[str]:
    seen, names, todo = set(), set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo += [f for f, _ in fn.next_functions]
    return names


@pytest.mark.parametrize("name", MODELS.names())
def test_every_net_trains_deterministically_on_cuda(name: str) -> None:
    """`train.deterministic` is strict: a net whose backward uses an op with no deterministic
    CUDA kernel would stop with an error on a GPU. Read from the autograd graph on the CPU."""
    model = small_model(name).train()
    x, y = fixed_batch(IMAGE)
    names = _backward_functions(F.cross_entropy(model(x), y, label_smoothing=0.1))
    assert "ConvolutionBackward0" in names or "AddmmBackward0" in names  # the graph was read
    assert not names & NONDETERMINISTIC_ON_CUDA
