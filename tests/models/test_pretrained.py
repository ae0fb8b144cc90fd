"""Offline pretrained loading: torchvision and timm files, wrappers, fine-tune heads and clear errors."""

import pytest
import torch
import torchvision

from models import Checkpoint, CheckpointError, PreprocessSpec, create_model, load_pretrained
from models.checkpoint import load_checkpoint, model_from_checkpoint

IMAGENET_DEPTHS = (18, 34, 50, 101, 152)


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("depth", IMAGENET_DEPTHS)
def test_torchvision_state_dict_file_loads_with_identical_logits(depth, tmp_path):
    torch.manual_seed(depth)
    theirs = getattr(torchvision.models, f"resnet{depth}")().eval()
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(theirs.state_dict(), path)
    ours = create_model(f"resnet{depth}")
    info = load_pretrained(ours, path)
    assert info.reinitialized == []
    x = torch.randn(2, 3, 96, 96)
    assert (_logits(ours, x) - _logits(theirs, x)).abs().max().item() <= 1e-5


def test_timm_safetensors_loads_with_identical_logits(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    theirs = timm.create_model("resnet50", pretrained=False).eval()
    path = tmp_path / "model.safetensors"
    save_file(theirs.state_dict(), str(path))
    ours = create_model("resnet50")
    load_pretrained(ours, path)
    x = torch.randn(2, 3, 96, 96)
    assert (_logits(ours, x) - _logits(theirs, x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("wrapper", ["state_dict", "state_dict_ema", "model"])
def test_wrapped_and_module_prefixed_state_dicts(wrapper, tmp_path):
    source = create_model("resnet20").eval()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: state, "epoch": 3}, path)
    target = create_model("resnet20")
    load_pretrained(target, path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(target, x), _logits(source, x))


def test_fine_tune_load_reinitialises_the_head_and_reports_it(tmp_path):
    theirs = torchvision.models.resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"  # torchvision's published file name
    torch.save(theirs.state_dict(), path)
    ours = create_model("resnet18", num_classes=10)
    fresh_head = ours.fc.weight.detach().clone()
    info = load_pretrained(ours, path)
    assert info.reinitialized == ["fc.weight", "fc.bias"]
    assert "re-initialised fc.weight, fc.bias" in info.summary()
    torch.testing.assert_close(ours.fc.weight, fresh_head)
    torch.testing.assert_close(ours.conv1.weight, theirs.conv1.weight)
    torch.testing.assert_close(ours.layer4[1].bn2.running_var, theirs.layer4[1].bn2.running_var)
    # the published file name tells us the weights' own preprocessing
    assert info.preprocess == PreprocessSpec(input_size=224, resize_size=256, interpolation="bilinear")
    assert info.class_names is None  # the new head has other classes


def test_wrong_architecture_lists_the_mismatched_keys(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(CheckpointError) as excinfo:
        load_pretrained(create_model("resnet18"), path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "unexpected (" in message and "layer1.0.conv3.weight" in message
    assert (
        "wrong shape (" in message and "layer1.0.conv1.weight: file (64, 64, 1, 1) vs model (64, 64, 3, 3)" in message
    )


def test_corrupted_file_gives_a_clear_error(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(create_model("resnet20").state_dict(), good)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"corrupt\.pth: cannot be read as a PyTorch weights file.*truncated"):
        load_pretrained(create_model("resnet20"), corrupt)
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_pretrained(create_model("resnet20"), empty)
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors: cannot be read as a safetensors file"):
        load_pretrained(create_model("resnet20"), bad_safetensors)


def test_missing_file_and_missing_cache_entries_say_where_to_put_the_file(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such file"):
        load_pretrained(create_model("resnet20"), tmp_path / "nope.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(CheckpointError) as excinfo:
        load_pretrained(create_model("resnet50"), "torchvision:resnet50.IMAGENET1K_V2")
    assert "resnet50-11ad3fa6.pth" in str(excinfo.value)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in str(excinfo.value)
    with pytest.raises(CheckpointError, match="no weights 'IMAGENET9K'"):
        load_pretrained(create_model("resnet50"), "torchvision:resnet50.IMAGENET9K")


def test_timm_cache_name_missing_says_where(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as excinfo:
        load_pretrained(create_model("resnet50"), "timm:resnet50.a1_in1k")
    assert "model.safetensors" in str(excinfo.value) and "timm/resnet50.a1_in1k" in str(excinfo.value)


def test_torchvision_cache_name_resolves_from_the_local_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    theirs = torchvision.models.resnet50().eval()
    torch.save(theirs.state_dict(), cache / "resnet50-11ad3fa6.pth")
    ours = create_model("resnet50")
    info = load_pretrained(ours, "torchvision:resnet50.IMAGENET1K_V2")
    assert info.source == "torchvision:resnet50.IMAGENET1K_V2"
    assert info.preprocess.resize_size == 232 and info.preprocess.input_size == 224  # V2's own recipe
    assert info.class_names[281] == "tabby"
    x = torch.randn(1, 3, 64, 64)
    assert (_logits(ours, x) - _logits(theirs, x)).abs().max().item() <= 1e-5


def test_timm_cache_name_resolves_from_the_hugging_face_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    snapshot = tmp_path / "hf" / "models--timm--resnet50.a1_in1k" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (tmp_path / "hf" / "models--timm--resnet50.a1_in1k" / "refs").mkdir()
    (tmp_path / "hf" / "models--timm--resnet50.a1_in1k" / "refs" / "main").write_text("0123abcd")
    theirs = timm.create_model("resnet50").eval()
    save_file(theirs.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr("huggingface_hub.file_download.HF_HUB_CACHE", str(tmp_path / "hf"), raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    ours = create_model("resnet50")
    info = load_pretrained(ours, "timm:resnet50.a1_in1k")
    assert info.preprocess.interpolation == "bicubic" and info.preprocess.resize_size == 235  # crop_pct 0.95
    x = torch.randn(1, 3, 64, 64)
    assert (_logits(ours, x) - _logits(theirs, x)).abs().max().item() <= 1e-5


def _checkpoint(model, **extra):
    return {
        "arch": "resnet20",
        "arch_kwargs": {},
        "num_classes": 10,
        "class_names": [str(i) for i in range(10)],
        "preprocess": PreprocessSpec(input_size=32, resize_size=32).to_dict(),
        "model": model.state_dict(),
        **extra,
    }


def test_own_checkpoint_round_trip_prefers_ema(tmp_path):
    raw, ema = create_model("resnet20").eval(), create_model("resnet20").eval()
    path = Checkpoint.from_dict(_checkpoint(raw, ema=ema.state_dict())).save(tmp_path / "run" / "best.pt")
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file
    model, ckpt = model_from_checkpoint(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(_logits(model, x), _logits(ema, x))
    model, _ = model_from_checkpoint(path, use_ema=False)
    torch.testing.assert_close(_logits(model, x), _logits(raw, x))
    target = create_model("resnet20")
    info = load_pretrained(target, path)
    assert info.class_names == [str(i) for i in range(10)] and info.preprocess.input_size == 32


def test_checkpoint_errors_are_specific(tmp_path):
    state_only = tmp_path / "state.pt"
    torch.save(create_model("resnet20").state_dict(), state_only)
    with pytest.raises(CheckpointError, match="not a resnet-deploy checkpoint"):
        load_checkpoint(state_only)
    wrong_arch = tmp_path / "wrong.pt"
    torch.save({**_checkpoint(create_model("resnet20")), "arch": "resnet32"}, wrong_arch)
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(wrong_arch)
    incomplete = dict(_checkpoint(create_model("resnet20")))
    del incomplete["preprocess"]
    torch.save(incomplete, tmp_path / "incomplete.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['preprocess'\]"):
        load_checkpoint(tmp_path / "incomplete.pt")


def test_checkpoint_files_of_the_earlier_dict_format_load_and_keep_unknown_keys(tmp_path):
    """A checkpoint written as a plain dict by an earlier version (every key train wrote then, plus a key
    this version does not know) loads into `Checkpoint`, and re-saving it loses nothing."""
    model = create_model("resnet20")
    old = _checkpoint(
        model,
        optimizer={"state": {}, "param_groups": []},
        scheduler={"last_epoch": 3},
        scaler={},
        epoch=3,
        step=30,
        steps_into_epoch=0,
        rng=[],
        config={"data": "digits"},
        metrics={"top1": 91.5},
        best_top1=91.5,
        versions={"torch": "2.11.0"},
        future_field={"written by": "a newer version"},
    )
    torch.save(old, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.arch == "resnet20" and ckpt.num_classes == 10 and ckpt.epoch == 3 and ckpt.resumable
    assert ckpt.preprocess == PreprocessSpec(input_size=32, resize_size=32) and ckpt.metrics == {"top1": 91.5}
    assert ckpt.extra == {"future_field": {"written by": "a newer version"}}
    ckpt.save(tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert set(again) >= set(old) and again["future_field"] == old["future_field"]
    assert all(torch.equal(again["model"][k], v) for k, v in old["model"].items())


def test_checkpoint_validation_names_the_file_and_the_field(tmp_path):
    bad_names = dict(_checkpoint(create_model("resnet20")), class_names=[str(i) for i in range(9)])
    with pytest.raises(CheckpointError, match=r"x\.pt: 9 class names for num_classes=10"):
        Checkpoint.from_dict(bad_names, source="x.pt")
    bad_preprocess = dict(_checkpoint(create_model("resnet20")), preprocess={"input_size": 32, "crop": 1})
    with pytest.raises(CheckpointError, match="invalid preprocess block"):
        Checkpoint.from_dict(bad_preprocess, source="x.pt")
