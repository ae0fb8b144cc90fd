"""Wide ResNets, ResNeXt and WRN-28-10 against torchvision; builders; gradient checkpointing."""

import subprocess
import sys

import pytest
import torch
import torchvision

import models
from models import create_model

TORCHVISION_NETS = ["wide_resnet50_2", "resnext50_32x4d"]


@pytest.mark.parametrize("name", TORCHVISION_NETS)
def test_torchvision_state_dict_loads_and_gives_the_same_logits(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)().eval()
    ours = create_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # the same key names and shapes
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["wide_resnet101_2", "resnext101_32x8d"])
def test_deeper_variants_have_torchvision_keys_and_shapes(name):
    theirs = {k: v.shape for k, v in getattr(torchvision.models, name)().state_dict().items()}
    assert {k: v.shape for k, v in create_model(name).state_dict().items()} == theirs


def test_wrn28_10_is_the_papers_network():
    model = create_model("wrn28_10").eval()
    # Zagoruyko & Komodakis (2016), table 1: WRN-28-10 has 36.5M parameters.
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(36.5, abs=0.05)
    assert model.conv1.out_channels == 16 and [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [4, 4, 4]
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_builders_are_importable_from_models():
    from models import cifar_resnet18, resnext50_32x4d, wrn28_10

    assert cifar_resnet18(num_classes=7).fc.out_features == 7
    assert resnext50_32x4d.__name__ == "resnext50_32x4d" and "ResNeXt" in resnext50_32x4d.__doc__
    assert callable(wrn28_10)
    with pytest.raises(AttributeError):
        models.resnet19  # noqa: B018 - not a registered architecture
    # Looking up a name that is no architecture keeps `models` torch-free (the remote client imports it).
    probe = "import sys, models; assert not hasattr(models, 'setup_module'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def _train_step(checkpointed: bool):
    """One training forward/backward of a resnet20 with stochastic depth; saved-tensor bytes counted."""
    torch.manual_seed(0)
    model = create_model("resnet20", drop_path_rate=0.2, grad_checkpoint=checkpointed).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    return loss.detach(), grads, model.state_dict(), sum(storages.values())


def test_gradient_checkpointing_gives_the_same_step_with_less_saved_memory():
    loss, grads, state, saved = _train_step(checkpointed=False)
    loss_ckpt, grads_ckpt, state_ckpt, saved_ckpt = _train_step(checkpointed=True)
    torch.testing.assert_close(loss_ckpt, loss)
    torch.testing.assert_close(grads_ckpt, grads)
    # BatchNorm's running statistics move once per step, not again when a block is recomputed.
    torch.testing.assert_close(state_ckpt, state)
    # What autograd keeps for the backward pass (distinct storages): block inputs only, not every activation.
    assert saved_ckpt < saved / 3, (saved_ckpt, saved)


def test_gradient_checkpointing_is_off_in_eval_and_keeps_the_model_scriptable():
    model = create_model("resnet20", grad_checkpoint=True).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
