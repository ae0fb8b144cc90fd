"""`models.inspect`: the report's files, residual and gradient flow, Grad-CAM, and hooks left behind."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from PIL import Image

from models import create_model
from models.inspect import (
    InspectionInputs,
    grad_cam,
    gradient_flow,
    inspect_model,
    registered_hooks,
    relu_activity,
    residual_flow,
)
from models.inspect.__main__ import main as inspect_main
from models.inspect.probes import trainable_layers
from models.registry import get_model_spec


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_model_untouched(model, before_state, x, before_out):
    assert registered_hooks(model) == 0, "hooks were left on the model"
    assert all(p.grad is None for p in model.parameters()), "gradients were left on the parameters"
    after = model.state_dict()
    assert all(torch.equal(before_state[k], after[k]) for k in before_state), "weights or BN statistics changed"
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before_out), "the model's outputs changed"


def assert_report_complete(out_dir):
    report = (out_dir / "report.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert pictures, report
    for name in pictures:
        with Image.open(out_dir / name) as image:  # every embedded picture exists and is a readable PNG
            image.verify()
            assert image.format == "PNG"
    for png in out_dir.glob("*.png"):
        assert png.name in pictures, f"{png.name} written but not in report.md"
    summary = json.loads((out_dir / "inspection.json").read_text())
    return report, summary


def test_random_resnet50_report_writes_every_file_and_leaves_the_model_untouched(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=10).eval()
    spec = get_model_spec("resnet50").preprocess.with_input_size(64)
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 3, 5, 9])
    x = (pixels.float() / 255 - 0.45) / 0.225
    state = snapshot(model)
    with torch.no_grad():
        reference = model(x)

    result = inspect_model(
        model,
        [f"c{i}" for i in range(10)],
        spec,
        InspectionInputs([("noise.png", pixels[0])], pixels, labels),
        tmp_path,
        title="resnet50",
        gradcam_top_k=2,
        graph=False,
    )

    report, summary = assert_report_complete(tmp_path)
    assert {p.name for p in result.files} >= {
        "report.md",
        "inspection.json",
        "gradcam_noise.png",
        "filters_conv1.png",
        "residual_flow.png",
        "gradient_flow.png",
        "relu_activity.png",
        "features_layer4.png",
    }
    assert len(summary["residual_flow"]) == 16 and all(b["ratio"] > 0 for b in summary["residual_flow"])
    grads = summary["gradient_flow"]
    assert [g["layer"] for g in grads] == [name for name, _ in trainable_layers(model)]
    assert all(math.isfinite(g["grad_norm"]) and g["grad_norm"] > 0 for g in grads)
    assert {s["stage"] for s in summary["relu_activity"]} == {"stem", "layer1", "layer2", "layer3", "layer4"}
    assert "| fc | Linear | 10 | 20,490 |" in report
    assert "## Graph" in report  # drawn, or skipped with what to install
    assert_model_untouched(model, state, x, reference)


@pytest.mark.parametrize(
    "arch", ["resnet18", "resnet50", "preact_resnet18", "resnet20", "resnet50d", "cifar_preact_resnet18"]
)
def test_residual_ratios_of_a_zero_init_residual_net_are_zero(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, zero_init_residual=True).eval()
    flows = residual_flow(model, torch.randn(2, 3, 32, 32))
    assert flows and all(f.ratio == 0.0 for f in flows), [(f.block, f.ratio) for f in flows]
    assert all(f.identity_norm > 0 for f in flows)
    trained_like = create_model(arch, num_classes=10).eval()
    assert all(f.ratio > 0 for f in residual_flow(trained_like, torch.randn(2, 3, 32, 32)))
    assert registered_hooks(model) == 0


def test_a_block_without_shortcut_has_an_undefined_ratio(tmp_path):
    model = create_model("resnet20").eval()
    model.layer2[1].residual = False  # what a plain (shortcut-free) block declares
    flows = {f.block: f for f in residual_flow(model, torch.randn(2, 3, 32, 32))}
    assert flows["layer2.1"].ratio is None and flows["layer2.1"].branch_norm > 0
    assert flows["layer2.0"].ratio is not None


def test_gradient_norms_are_finite_and_nonzero_for_every_trainable_layer_and_state_is_restored():
    torch.manual_seed(0)
    model = create_model("preact_resnet20", drop_path_rate=0.1, dropout=0.2).train()
    x, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    state = snapshot(model)
    rng = torch.get_rng_state()
    grads = gradient_flow(model, x, labels)
    assert len(grads) == len(trainable_layers(model))
    assert all(math.isfinite(g.grad_norm) and g.grad_norm > 0 for g in grads), [g for g in grads if not g.grad_norm > 0]
    assert model.training, "the model's train/eval mode was not restored"
    assert torch.equal(torch.get_rng_state(), rng), "the probe consumed the global RNG"
    assert relu_activity(model, x)
    with torch.no_grad():
        reference = model.eval()(x)
    assert_model_untouched(model, state, x, reference)


def red_detector() -> torch.nn.Module:
    """A resnet20 whose only route to class 1 ('red') is a red detector in the stem.

    Every residual branch starts at zero (the blocks are identities, the option-A shortcuts subsample),
    stem channel 0 copies the red channel, the other 15 stem channels are random, and the classifier
    reads channel 0 alone: red pixels anywhere are the evidence for 'red', nothing else is.
    """
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=2, zero_init_residual=True).eval()
    with torch.no_grad():
        model.conv1.weight[0].zero_()
        model.conv1.weight[0, 0, 1, 1] = 1.0
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[1, 0] = 1.0
    return model


def test_gradcam_points_at_the_region_the_weights_make_decisive():
    model = red_detector()
    x = torch.randn(1, 3, 32, 32) * 0.5
    x[0, 0] = -1.0  # no red anywhere ...
    x[0, 0, 2:12, 18:28] = 2.0  # ... except in a top-right square
    state = snapshot(model)
    with torch.no_grad():
        reference = model(x)

    maps = grad_cam(model, x, ["other", "red"], top_k=2)

    assert maps[0].label == "red" and maps[0].probability > 0.5
    heat = torch.from_numpy(maps[0].heatmap)
    assert heat.shape == (32, 32) and float(heat.max()) == pytest.approx(1.0)
    row, col = divmod(int(heat.argmax()), 32)
    assert 0 <= row < 14 and 16 <= col < 30, (row, col)
    inside = float(heat[:16, 16:].sum()) / float(heat.sum())
    assert inside > 0.9, f"only {inside:.0%} of the map lies in the red square's quadrant"
    assert_model_untouched(model, state, x, reference)


def test_cli_on_the_demo_digits_model(digits_checkpoint, tmp_path):
    from imagedata.digits import write_digits_folder

    images = write_digits_folder(tmp_path / "digits", split="val", limit_per_class=2, image_size=32)
    out = tmp_path / "inspect"
    code = inspect_main(
        [
            "--checkpoint",
            str(digits_checkpoint),
            "--data",
            str(images),
            "--batch-size",
            "20",
            "--image",
            str(next((images / "7").glob("*.png"))),
            "--gradcam",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report, summary = assert_report_complete(out)
    assert summary["batch_size"] == 20 and "20 images" in report and "10 classes" in report
    assert any(p.startswith("gradcam_") for p in summary["files"])
    assert len(summary["residual_flow"]) == 9 and all(b["ratio"] is not None for b in summary["residual_flow"])
    assert all(math.isfinite(g["grad_norm"]) and g["grad_norm"] > 0 for g in summary["gradient_flow"])


def test_cli_errors_name_the_file_and_what_is_wrong(digits_checkpoint, tmp_path, capsys):
    (tmp_path / "cats").mkdir()
    assert (
        inspect_main(["--checkpoint", str(digits_checkpoint), "--data", str(tmp_path), "--out", str(tmp_path / "o")])
        == 1
    )
    assert "folder 'cats' is not one of the model's 10 classes" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert (
        inspect_main(["--checkpoint", str(digits_checkpoint), "--image", str(bad), "--out", str(tmp_path / "o")]) == 1
    )
    assert f"{bad}: not a supported image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inspect_main(["--arch", "resnet18", "--out", str(tmp_path / "o")])  # nothing to look at
