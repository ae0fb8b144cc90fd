"""A classifier from one of our checkpoints or a bare torchvision/timm weight file, and `python -m train
--evaluate`: measure it on labelled data without training (torchvision's
`--test-only`), for our checkpoints and for torchvision/timm weight files.

    python -m train --evaluate --checkpoint runs/resnet20-digits/best.pt               # its own val split
    python -m train --evaluate --checkpoint resnet50-11ad3fa6.pth --arch resnet50 --data imagenet --data-dir /data/imagenet

The images go through the model's own preprocessing (the checkpoint's, or the weight file's known
one, else the data kind's), then `classify.classifier.Classifier`, the server's prediction path; the
metrics come from `classify.evaluation`, the same code `python -m client evaluate` uses for an export
artifact or the running server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from export.runners import EagerRunner
from imagedata import kinds as datakinds
from models import Checkpoint, CheckpointError, create_model, get_model_spec, imagenet_class_names
from models.checkpoint import load_state_dict_strict, read_weights_file
from models.pretrained import published_accuracy_table, read_pretrained
from train.config import DEFAULTS, ConfigError

from .classifier import Classifier
from .evaluation import EvaluationReport, evaluate_predictions

BATCH = 64


def open_model(weights: str, arch: str | None, config: dict[str, Any]) -> tuple[Classifier, dict[str, Any], str]:
    """(classifier, data config, what it is) for one of our checkpoints, or a bare torchvision/timm weight
    file (or cache name) with `arch`. `config` holds the data flags given (may be empty)."""
    cache_name = weights.startswith(("torchvision:", "timm:"))
    if not cache_name and not Path(weights).is_file():
        raise CheckpointError(
            f"--checkpoint {weights}: no such file. Pass one of our checkpoints, or a torchvision/timm weight file "
            "(or a cache name such as torchvision:resnet50.IMAGENET1K_V2) with --arch"
        )
    raw = None if cache_name else read_weights_file(weights)
    if isinstance(raw, dict) and "arch" in raw and "model" in raw:
        ckpt = Checkpoint.from_dict(raw, source=weights)
        data_config = {**(ckpt.config or {}), **config}
        return Classifier.from_checkpoint(ckpt), data_config, f"{ckpt.arch} checkpoint {weights}"
    if not arch:
        raise ConfigError(f"{weights} is a bare weight file, not one of our checkpoints: name its network with --arch")
    info, state = read_pretrained(weights)
    if "fc.weight" not in state:
        raise CheckpointError(f"{info.path}: no classifier (fc.weight) in this weight file")
    model = create_model(arch, num_classes=int(state["fc.weight"].shape[0]))
    load_state_dict_strict(model, state, source=str(info.path))
    data_config = {**DEFAULTS, "arch": arch, **config}
    has_data = bool(config.get("data"))
    preprocess = info.preprocess or (
        datakinds.default_preprocess(data_config) if has_data else get_model_spec(arch).preprocess
    )
    class_names = info.class_names or (datakinds.class_names(data_config) if has_data else None)
    if class_names is None:  # a 1000-class weight file under any name: torchvision's or timm's ImageNet-1k
        imagenet = model.num_classes == len(imagenet_class_names())
        class_names = list(imagenet_class_names()) if imagenet else [f"class {i}" for i in range(model.num_classes)]
    if len(class_names) != model.num_classes:
        raise ConfigError(
            f"{info.path}: {model.num_classes} classes in the weights, {len(class_names)} in --data "
            f"{config['data']}; evaluate on data with the weights' own classes"
        )
    runner = EagerRunner(model, preprocess=preprocess, class_names=class_names)
    return Classifier(runner), data_config, f"{arch} weights {info.path.name}"


def evaluate_weights(weights: str, arch: str | None, config: dict[str, Any], out: Path, log=print) -> EvaluationReport:
    """Evaluate on the validation split the data config names; writes OUT/evaluation.json and confusion.png."""
    classifier, data_config, source = open_model(weights, arch, config)
    if not data_config.get("data"):
        raise ConfigError(f"{weights} records no data set: pass --data (and --data-dir)")
    dataset = datakinds.build_validation_set(data_config, classifier.preprocess)
    folder_names = datakinds.class_names(data_config)
    where = f"validation split of {data_config['data']!r} ({data_config.get('data_dir') or 'built in'})"
    log(f"evaluating {source} on the {where}: {len(dataset)} images")
    ranked, truth = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, collate_fn=list)
    for batch in loader:
        probabilities = classifier.probabilities([torch.as_tensor(pixels) for pixels, _ in batch])
        ranked += [[name for name, _ in classifier.top_k_of(row)] for row in probabilities]
        truth += [folder_names[int(label)] for _, label in batch]
    report = evaluate_predictions(ranked, truth, classifier.class_names, source=source, data=where)
    paths = report.write(out)
    log(report.summary())
    if len(classifier.class_names) == len(imagenet_class_names()) and published_accuracy_table(
        data_config.get("arch", "")
    ):
        log(published_accuracy_table(data_config.get("arch", "")))  # the published figures to compare with
    log(f"wrote {paths['json']} and {paths['confusion']}")
    return report
