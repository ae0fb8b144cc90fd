"""Architecture tests: parameter counts, torchvision equivalence, v2 blocks, options, exportability."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision

from export.manifest import read_manifest
from models import BasicBlock, Bottleneck, create_model, list_models, load_checkpoint
from tests.fixtures.exported import run_export
from tests.fixtures.trained import run_train, train_command

IMAGENET_DEPTHS = (18, 34, 50, 101, 152)


@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_imagenet_parameter_count_equals_torchvision(depth):
    ours = create_model(f"resnet{depth}")
    theirs = getattr(torchvision.models, f"resnet{depth}")()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize(
    "name, millions",
    [("cifar_resnet18", 11.2), ("cifar_resnet34", 21.3), ("cifar_resnet50", 23.5), ("cifar_resnet101", 42.5)],
)
def test_cifar_parameter_counts_match_the_seeds(name, millions):
    params = sum(p.numel() for p in create_model(name, num_classes=10).parameters()) / 1e6
    assert params == pytest.approx(millions, rel=0.01)


def test_cifar_paper_resnet20_option_a_is_parameter_free():
    option_a = sum(p.numel() for p in create_model("resnet20").parameters())
    option_b = sum(p.numel() for p in create_model("resnet20", shortcut="B").parameters())
    assert option_a == pytest.approx(0.27e6, rel=0.01)
    assert option_b > option_a  # the two projection shortcuts add 1x1 conv + BN weights


@pytest.mark.parametrize("depth, blocks", [(20, 3), (32, 5), (44, 7), (56, 9), (110, 18)])
def test_cifar_paper_depths(depth, blocks):
    model = create_model(f"resnet{depth}")
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [blocks] * 3
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert convs + 1 == depth  # 6n+1 convs plus the classifier


def test_cifar_stem_has_no_max_pool_and_keeps_resolution():
    model = create_model("cifar_resnet18").eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_bottleneck_strides_on_the_3x3_conv():
    block = create_model("resnet50").layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_pre_activation_block_structure():
    model = create_model("resnet18", pre_activation=True).eval()
    block = model.layer2[0]
    x = torch.randn(2, 64, 16, 16)
    # v2: the block is BN -> ReLU -> conv, and nothing follows the addition (negative outputs survive).
    assert block.bn1.num_features == 64  # normalises the input, before conv1
    assert (block(x) < 0).any()
    assert isinstance(model.final_bn, torch.nn.BatchNorm2d)
    features = model.forward_features(torch.randn(2, 3, 64, 64))
    assert (features >= 0).all()  # final BN + ReLU before pooling
    v1 = create_model("resnet18").eval()
    assert (v1.layer2[0](x) >= 0).all()  # v1 ends each block with a ReLU


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet50", "resnet20", "preact_resnet18", "preact_resnet50", "cifar_preact_resnet18"]
)
def test_zero_init_residual_makes_each_block_its_shortcut(name):
    model = create_model(name, zero_init_residual=True).train()
    blocks = model.residual_blocks()
    assert blocks
    for block in blocks:
        in_ch = block.conv1.in_channels
        x = torch.randn(2, in_ch, 16, 16)
        shortcut_input = torch.relu(block.bn1(x)) if block.pre_activation else x
        identity = x if block.downsample is None else block.downsample(shortcut_input)
        expected = identity if block.pre_activation else torch.relu(identity)
        torch.testing.assert_close(block(x), expected)
    normal = create_model(name).train()
    block = normal.residual_blocks()[-1]
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    assert not torch.allclose(block(x), torch.relu(x) if not block.pre_activation else x)


def test_he_init_uses_fan_out():
    conv = create_model("resnet50").layer3[0].conv2  # 256 -> 256, 3x3
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


def test_stochastic_depth_rates_increase_linearly_and_only_in_training():
    model = create_model("resnet20", drop_path_rate=0.2)
    rates = [b.drop_path.p if hasattr(b.drop_path, "p") else 0.0 for b in model.residual_blocks()]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)
    assert np.all(np.diff(rates) > 0)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))


def test_dropout_before_classifier():
    model = create_model("resnet18", dropout=0.5)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.5


def test_resnet_d_matches_timm_keys_and_outputs():
    timm = pytest.importorskip("timm")
    theirs = timm.create_model("resnet50d", pretrained=False).eval()
    ours = create_model("resnet50d").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "name, size", [("resnet50", 64), ("cifar_resnet18", 32), ("resnet20", 32), ("preact_resnet18", 64)]
)
def test_forward_backward_and_channels_last(name, size):
    model = create_model(name, num_classes=7)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    cl_model = create_model(name, num_classes=7).eval()
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(cl_model(x.to(memory_format=torch.channels_last)), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_to_torchscript_and_onnx(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)  # small enough for ImageNet nets too (down to 1x1 before pooling)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), expected)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: fast enough to smoke-test all architectures.
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"]
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    # Untrained deep nets have large logits: compare relative to their scale.
    scale = max(1.0, expected.abs().max().item())
    assert np.abs(logits - expected.numpy()).max() <= 1e-4 * scale


def test_registry_lists_every_family():
    names = list_models()
    for expected in ("resnet18", "resnet152", "cifar_resnet101", "resnet110", "preact_resnet56", "resnet50d"):
        assert expected in names
    assert list_models("cifar_resnet*") == ["cifar_resnet18", "cifar_resnet34", "cifar_resnet50", "cifar_resnet101"]


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown architecture 'resnet5'.*'resnet56'"):
        create_model("resnet5")
    with pytest.raises(TypeError, match="unknown options"):
        create_model("resnet18", zero_gamma=True)


def test_block_types():
    assert isinstance(create_model("resnet34").layer1[0], BasicBlock)
    assert isinstance(create_model("resnet101").layer1[0], Bottleneck)


def test_python_m_models_prints_the_table():
    result = subprocess.run(
        [sys.executable, "-m", "models", "resnet5*"], capture_output=True, text=True, check=True, timeout=120
    )
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("resnet")}
    assert float(lines["resnet50"][2]) == pytest.approx(25.56, abs=0.01)  # params (M)
    assert float(lines["resnet50"][3]) == pytest.approx(4.09, abs=0.01)  # GMACs (what torchvision reports as GFLOPS)
    assert lines["resnet50"][4] == "224x224"
    assert lines["resnet56"][4] == "32x32"


# The write-ups' ablations: the norm-free network, the plain (shortcut-free) network, option B shortcuts.

ABLATION_NETS = ["resnet20", "resnet50", "cifar_resnet18", "cifar_preact_resnet18"]


@pytest.mark.parametrize("name", ABLATION_NETS)
def test_norm_none_has_no_batchnorm_and_runs(name):
    model = create_model(name, norm="none", num_classes=10).eval()
    assert not [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not [k for k in model.state_dict() if "running_mean" in k or k.endswith("num_batches_tracked")]
    size = 32 if name != "resnet50" else 64
    assert torch.isfinite(model(torch.randn(2, 3, size, size))).all()
    with pytest.raises(ValueError, match="unknown norm 'group'"):
        create_model(name, norm="group")


@pytest.mark.parametrize("name", ABLATION_NETS)
def test_default_nets_keep_their_batchnorm_and_keys(name):
    default, explicit = create_model(name), create_model(name, norm="batch", residual=True)
    assert list(default.state_dict()) == list(explicit.state_dict())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in default.modules())
    assert all(block.residual is True for block in default.residual_blocks())


@pytest.mark.parametrize("name", ABLATION_NETS)
def test_plain_nets_have_no_shortcuts(name):
    model = create_model(name, residual=False)
    blocks = model.residual_blocks()
    assert blocks and all(b.residual is False and b.downsample is None for b in blocks)
    assert "downsample" not in " ".join(model.state_dict())


def test_plain_net_differs_from_the_resnet_with_the_same_weights():
    # resnet20's option A shortcuts have no parameters, so both nets hold exactly the same tensors.
    torch.manual_seed(0)
    resnet = create_model("resnet20").eval()
    plain = create_model("resnet20", residual=False).eval()
    plain.load_state_dict(resnet.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    assert not torch.allclose(resnet(x), plain(x), atol=1e-4)
    # Without its shortcut each block is F(x) alone: block(x) = relu(bn2(conv2(relu(bn1(conv1(x)))))).
    block = plain.layer1[0]
    h = torch.randn(2, 16, 32, 32)
    torch.testing.assert_close(block(h), torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(h)))))))


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_zero_init_residual_leaves_a_plain_net_alive(norm):
    # A plain block has no shortcut: zeroing its last layer would make the whole network output a constant.
    model = create_model("resnet20", residual=False, zero_init_residual=True, norm=norm).eval()
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.std(dim=0).max() > 1e-4


def test_option_b_shortcut_on_the_paper_nets():
    model = create_model("resnet20", shortcut="B")
    assert isinstance(model.layer2[0].downsample[0], torch.nn.Conv2d)  # 1x1 projection + BN
    assert isinstance(model.layer2[0].downsample[1], torch.nn.BatchNorm2d)
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in create_model("resnet20").parameters())


@pytest.mark.parametrize(
    "flags, arch_kwargs",
    [(["--norm", "none", "--lr", "0.01"], {"norm": "none"}), (["--plain"], {"residual": False})],
    ids=["norm-none", "plain"],
)
def test_ablation_nets_train_and_export_to_onnx_with_parity(flags, arch_kwargs, tmp_path):
    # A few steps on small synthetic images: what is tested is the path (CLI flag -> checkpoint -> rebuilt
    # network -> ONNX within its parity gate), not the accuracy.

    cmd = train_command(
        tmp_path,
        "net",
        "--arch",
        "resnet20",
        "--data",
        "synthetic",
        "--synthetic-size",
        "128",
        "--num-classes",
        "10",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--workers",
        "0",
        *flags,
    )
    proc = run_train(cmd)
    assert proc.returncode == 0, proc.stderr
    checkpoint = load_checkpoint(tmp_path / "net" / "best.pt")
    assert checkpoint.arch_kwargs == arch_kwargs and checkpoint.step == 4
    model = checkpoint.build_model()
    if arch_kwargs.get("norm") == "none":
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    else:
        assert all(b.residual is False for b in model.residual_blocks())
    proc = run_export(
        "--checkpoint",
        str(tmp_path / "net" / "best.pt"),
        "--to",
        "onnx",
        "--name",
        "net",
        "--out",
        str(tmp_path / "export"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = read_manifest(tmp_path / "export")
    assert manifest.arch_kwargs == arch_kwargs and manifest.find("onnx").passed
