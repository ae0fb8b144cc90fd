"""One training run from a resolved config: data, model, optimizer, the epoch loop, checkpoints, logs.

`run(config)` is what `python -m train` calls, in one process or in each of torchrun's processes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from fsutil.atomic import sha256_file
from fsutil.owned import MARKER_NAME, is_owned, remove_owned_tree
from imagedata.kinds import build_dataset, build_validation_set, default_preprocess
from models import Checkpoint, PreprocessSpec, create_model, load_pretrained
from models.checkpoint import load_state_dict_strict

from . import data as datamod
from .checkpoints import (
    RUN_KIND,
    check_run_name,
    continues_its_run,
    fork_refusal,
    load_resume_checkpoint,
    prepare_run_dir,
    resolve_resume,
    rng_state,
    save_checkpoint_file,
    seed_everything,
    set_rng_state,
)
from .config import (
    RESUMABLE_OVERRIDES,
    TOPOLOGY_KEYS,
    ConfigError,
    TrainConfig,
    arch_kwargs,
    checked_overrides,
    resolve_config,
    validate,
    with_cifar_variant,
    write_config,
)
from .distributed import (
    DistInfo,
    all_gather_objects,
    any_rank,
    barrier,
    broadcast_buffers,
    elastic_restart_count,
    init_distributed,
    launched_as_main,
    set_threads_per_process,
    shutdown_distributed,
)
from .engine import StepParts, evaluate, prepare_batch, train_one_epoch
from .finetune import freeze, frozen_norm_layers, set_train_mode
from .optim import build_optimizer, build_scheduler
from .reporting import RunReporter, measure_internals
from .unreadable import UnreadableImages

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RunResult:
    run_dir: Path
    best_top1: float
    final_metrics: dict[str, float]
    epochs_done: int
    interrupted_by: int | None = None  # the signal that stopped the run, if any
    seconds: float = 0.0


def run_dir_of(config: TrainConfig) -> Path:
    return Path(config.out) / check_run_name(config.name or f"{config.arch}-{config.data}")


def build_config(overrides: dict[str, Any], recipe: str | None = None) -> TrainConfig:
    """The run's config. With `--resume`, the checkpoint's config plus the flags given now.

    Resuming continues a run only from its own newest `last.pt`; from any other checkpoint (best.pt,
    a copy in /tmp) it forks a new run directory (`--name NEW`), or is refused: history is never rewritten.
    A worker group restarted by torchrun's elastic agent continues from the run's own `last.pt` by itself.
    """
    overrides = with_cifar_variant(overrides)  # before --resume auto looks for ARCH-DATA/last.pt
    restarted = elastic_restart_count() > 0
    if restarted and not overrides.get("resume"):
        overrides = {**overrides, "resume": "auto"}
    resume = overrides.get("resume")
    if resume and resume != "auto":
        path = resolve_resume(resume, Path("."))
        ckpt = load_resume_checkpoint(path)
        config = _resumed_config(path, ckpt, overrides)
        if continues_its_run(path) and run_dir_of(config).resolve() == path.parent.resolve():
            return config
        if "name" not in overrides:
            raise fork_refusal(path)
        own_last = run_dir_of(config) / "last.pt"
        if restarted and continues_its_run(own_last):  # the fork already has a checkpoint of its own
            return _resumed_config(own_last, load_resume_checkpoint(own_last), overrides)
        return config.replace(
            forked_from={
                "path": str(path.resolve()),
                "sha256": sha256_file(path),
                "epoch": ckpt.epoch,
                "step": ckpt.step,
            }
        )
    config = resolve_config(overrides, recipe)
    if resume == "auto":
        path = resolve_resume("auto", run_dir_of(config))
        if path is not None:
            return _resumed_config(path, load_resume_checkpoint(path), overrides)
    return config


def _resumed_config(path: Path, ckpt: Checkpoint, overrides: dict[str, Any]) -> TrainConfig:
    """The checkpoint's stored config (keys it lacks take their defaults) with the options given now."""
    stored = TrainConfig.from_dict(ckpt.config, f"--resume {path}: its stored config")
    overrides = checked_overrides(overrides)
    fixed = [k for k in TOPOLOGY_KEYS if k in overrides and overrides[k] != getattr(stored, k)]
    if fixed:
        raise ConfigError(
            f"--resume {path}: {', '.join(f'{k} {getattr(stored, k)} -> {overrides[k]}' for k in fixed)} would change "
            "the batches and the LR schedule the checkpoint was made with; resume with the same values, or start "
            "a new run (--pretrained with the checkpoint) to train with others"
        )
    ignored = RESUMABLE_OVERRIDES + ("resume", "name", "out", "overwrite")
    changed = sorted(k for k, v in overrides.items() if k not in ignored and getattr(stored, k) != v)
    if changed and launched_as_main():
        print(f"warning: resuming with changed {changed}; the run will not match an uninterrupted one", file=sys.stderr)
    changes = {**overrides, "resume": str(path)}
    if "out" not in ckpt.config and "out" not in overrides:
        changes["out"] = str(path.parent.parent)  # a fork's default --out
    if "out" not in overrides and "name" not in overrides:  # continuing in the checkpoint's own folder
        changes.update(out=str(path.parent.parent), name=path.parent.name)
    config = stored.replace(**changes)
    validate(config)
    return config


def check_topology(ckpt: Checkpoint, path: Path, world_size: int) -> None:
    """A run stopped mid-epoch resumes only with its process count: each process's place in the epoch's
    shuffled order depends on it, so another count would repeat or skip samples. At an epoch boundary
    any count continues exactly (the next epoch is a fresh shuffle); only the RNG states are not restored.
    The same rule holds when torchrun's elastic agent restarts the group with more or fewer nodes."""
    saved = len(ckpt.rng)
    if ckpt.steps_into_epoch and saved and saved != world_size:
        raise ConfigError(
            f"--resume {path}: stopped mid-epoch (step {ckpt.steps_into_epoch} of epoch {ckpt.epoch + 1}) with "
            f"{saved} process(es) in all; resume it with {saved} (torchrun --nnodes x --nproc-per-node = "
            f"{saved}), not {world_size}; an elastic job (--nnodes MIN:MAX) may change its size only at an epoch end"
        )


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is visible")
        return torch.device("cuda", local_rank if name == "cuda" else torch.device(name).index)
    return torch.device(name)


def eval_preprocess(config: TrainConfig, pretrained_spec: PreprocessSpec | None) -> PreprocessSpec:
    """The dataset's (or the pretrained weights') eval preprocessing, with --image-size etc. applied."""
    spec = pretrained_spec or default_preprocess(config.to_dict())
    if config.image_size:
        spec = spec.with_input_size(config.image_size)
    if config.val_resize:
        spec = dataclasses.replace(spec, resize_size=config.val_resize)
    if config.interpolation:
        spec = dataclasses.replace(spec, interpolation=config.interpolation)
    if config.mean:
        spec = dataclasses.replace(spec, mean=tuple(config.mean), std=tuple(config.std))
    return spec


def batch_mixer(config: TrainConfig, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix on the normalised device batch (one of them per batch when both are on)."""
    mixers = []
    if config.mixup > 0:
        mixers.append(v2.MixUp(alpha=config.mixup, num_classes=num_classes))
    if config.cutmix > 0:
        mixers.append(v2.CutMix(alpha=config.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class StopRequest:
    """SIGTERM / Ctrl-C set a flag; the loop saves a checkpoint at the next step boundary and exits.

    A second Ctrl-C falls through to Python's default (KeyboardInterrupt) for an immediate stop.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run(config: TrainConfig) -> RunResult:
    """Train as `config` says (see train/config.py for the keys). Under torchrun, call it in every rank."""
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = init_distributed(device.type)
    try:
        set_threads_per_process(dist_info)
        return _Run(config, device, dist_info).train()
    finally:
        shutdown_distributed()


def discard_unused_run_dir(run_dir: Path) -> None:
    """Remove `run_dir` when it holds nothing but our marker: a run that stopped before writing anything."""
    if is_owned(run_dir, RUN_KIND) and [p.name for p in run_dir.iterdir()] == [MARKER_NAME]:
        remove_owned_tree(run_dir, RUN_KIND)  # refuses a symlink


class _Run:
    def __init__(self, config: TrainConfig, device: torch.device, dist_info: DistInfo):
        self.config, self.device, self.dist = config, device, dist_info
        self.run_dir = run_dir_of(config)
        resume_path = resolve_resume(config.resume, self.run_dir)
        self.resume = load_resume_checkpoint(resume_path) if resume_path else None
        # Continuing: the run's own last.pt. A fork (config.forked_from) starts a fresh run directory.
        continuing = resume_path is not None and resume_path.resolve() == (self.run_dir / "last.pt").resolve()
        if self.resume is not None:
            check_topology(self.resume, resume_path, dist_info.world_size)
        if dist_info.is_main:
            prepare_run_dir(self.run_dir, resume=continuing, overwrite=config.overwrite)
        barrier()
        try:
            self._setup_determinism()
            self._setup_model_and_data()
            self._setup_optimization()
        except BaseException:
            if dist_info.is_main:
                discard_unused_run_dir(self.run_dir)  # a failed data check leaves no empty run folder
            raise
        if self.resume is not None:
            self._restore(self.resume)
        if dist_info.is_main:
            write_config(self.config, self.run_dir / "config.yaml")

    # -- setup ------------------------------------------------------------------------------------

    def _setup_determinism(self) -> None:
        cfg = self.config
        seed_everything(cfg.seed + self.dist.rank)  # each rank augments differently
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _setup_model_and_data(self) -> None:
        cfg = self.config
        _, class_names = build_dataset(cfg.to_dict(), "val", None)
        self.class_names = class_names
        self.arch_kwargs = arch_kwargs(cfg)
        network = create_model(
            cfg.arch,
            num_classes=len(class_names),
            grad_checkpoint=cfg.grad_checkpoint,  # training only: not in arch_kwargs
            **self.arch_kwargs,
        )
        pretrained_spec = None
        if self.resume is not None:
            pretrained_spec = self.resume.preprocess
        elif cfg.pretrained:
            info = load_pretrained(network, cfg.pretrained)
            pretrained_spec = info.preprocess
            self.log(info.summary())
        self.preprocess = pretrained_spec if self.resume is not None else eval_preprocess(cfg, pretrained_spec)
        frozen = freeze(network, backbone=cfg.freeze_backbone, until=cfg.freeze_until)
        if frozen:
            self.log(
                f"frozen: {len(frozen)} parameter tensors ({'backbone' if cfg.freeze_backbone else 'up to ' + cfg.freeze_until})"
            )
        self.frozen_norms = frozen_norm_layers(network)

        world, accum = self.dist.world_size, cfg.accum_steps
        batch = cfg.batch_size
        if batch % (world * accum):
            raise ConfigError(f"batch_size {batch} must be divisible by processes x accum_steps = {world} x {accum}")
        self.per_process_batch = batch // world
        pin = self.device.type == "cuda"
        train_set = datamod.build_train_set(cfg, datamod.train_transform(cfg, self.preprocess))
        val_set = build_validation_set(cfg.to_dict(), self.preprocess)
        self.train_loader = datamod.build_train_loader(
            train_set, cfg, self.per_process_batch, world, self.dist.rank, pin
        )
        val_batch = cfg.val_batch_size or max(self.per_process_batch, 64)
        self.val_loader = datamod.build_val_loader(val_set, cfg, val_batch, world, self.dist.rank, pin)
        self.steps_per_epoch = len(self.train_loader)
        self.log(
            f"{cfg.arch} on {cfg.data}: {len(train_set)} train / {len(val_set)} val images, "
            f"{len(class_names)} classes, {self.steps_per_epoch} steps per epoch, input {self.preprocess.input_size}px, "
            f"device {self.device}{f' x {world} processes' if world > 1 else ''}, "
            f"{torch.get_num_threads()} CPU thread(s) per process"
        )

        if cfg.sync_bn and world > 1:
            if self.device.type != "cuda":
                raise ConfigError(
                    "--sync-bn needs CUDA (torch's SyncBatchNorm); on CPU each process keeps its own BN statistics"
                )
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
            self.frozen_norms = frozen_norm_layers(network)
        network.to(self.device)
        if cfg.channels_last:
            network.to(memory_format=torch.channels_last)
        self.network = network
        self.ema = None
        if cfg.ema:
            self.ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        model: nn.Module = network
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(network, device_ids=ids)
        if cfg.compile:
            model = torch.compile(model)
        self.model = model

    def _setup_optimization(self) -> None:
        cfg = self.config
        self.optimizer = build_optimizer(self.network, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        amp_dtype = AMP_DTYPES[cfg.amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if amp_dtype == torch.float16 else None
        self.parts = StepParts(
            model=self.model,
            network=self.network,
            optimizer=self.optimizer,
            criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
            preprocess=self.preprocess,
            device=self.device,
            scheduler=self.scheduler,
            scaler=self.scaler,
            ema=self.ema,
            amp_dtype=amp_dtype,
            channels_last=cfg.channels_last,
            accum_steps=cfg.accum_steps,
            grad_clip=cfg.grad_clip or None,
            mix=batch_mixer(cfg, len(self.class_names)),
        )
        self.epoch = 0  # completed epochs
        self.step = 0  # optimizer steps taken
        self.steps_into_epoch = 0
        self.best_top1 = -1.0
        self.metrics: dict[str, float] = {}

    def _restore(self, ckpt: Checkpoint) -> None:
        load_state_dict_strict(self.network, ckpt.model, source=self.config.resume)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        if self.scaler is not None and ckpt.scaler:
            self.scaler.load_state_dict(ckpt.scaler)
        if self.ema is not None and ckpt.ema is not None:
            self.ema.module.load_state_dict(ckpt.ema)
            self.ema.n_averaged.fill_(max(ckpt.ema_updates, 1))
        self.epoch, self.step = ckpt.epoch, ckpt.step
        self.steps_into_epoch = ckpt.steps_into_epoch
        self.best_top1 = ckpt.best_top1
        self.metrics = dict(ckpt.metrics)
        states = ckpt.rng
        if len(states) == self.dist.world_size:
            set_rng_state(states[self.dist.rank])
        else:
            self.log(
                f"warning: checkpoint has RNG states for {len(states)} processes, not {self.dist.world_size}; not restored"
            )
        self.log(f"resumed from {self.config.resume} at epoch {self.epoch}, step {self.step}")

    # -- the loop ---------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        if self.dist.is_main:
            print(text, flush=True)

    def train(self) -> RunResult:
        cfg = self.config
        epochs = cfg.epochs
        reporter = RunReporter(
            self.run_dir,
            enabled=self.dist.is_main,
            tensorboard=cfg.tensorboard,
            plots=cfg.plots,
            resume_epoch=self.epoch,
            step=self.step,
        )
        stop = StopRequest()
        stop.install()
        log_every = max(cfg.log_every or 10, 1)
        save_every = cfg.save_every_steps
        unreadable = UnreadableImages(cfg.max_unreadable_images)
        started = time.perf_counter()
        try:
            while self.epoch < epochs:
                epoch = self.epoch
                skip = self.steps_into_epoch
                datamod.start_epoch(self.train_loader, epoch, skip * self.per_process_batch)
                reporter.start_epoch(epoch + 1, epochs, self.steps_per_epoch, skip)
                step0 = self.step

                def on_log(steps: int, loss: float, img_per_s: float, step0: int = step0) -> None:
                    reporter.log_steps(
                        steps,
                        loss,
                        img_per_s * self.dist.world_size,
                        self.optimizer.param_groups[0]["lr"],
                        step0 + steps,
                    )

                def should_stop(steps: int, step0: int = step0, skip: int = skip) -> bool:
                    """Between two steps: write last.pt every --save-every-steps; stop on a signal."""
                    if save_every and (step0 + steps) % save_every == 0 and skip + steps < self.steps_per_epoch:
                        self.step, self.steps_into_epoch = step0 + steps, skip + steps
                        self.save("last.pt")  # every rank: the RNG states are gathered
                    if self.dist.enabled and steps % log_every:
                        return False  # ranks agree on stopping only where they already synchronise
                    return any_rank(stop.signum is not None, self.device)

                result = train_one_epoch(
                    self.parts,
                    unreadable.batches(self.train_loader),
                    set_train_mode=lambda: set_train_mode(self.network, self.frozen_norms),
                    on_log=on_log,
                    should_stop=should_stop,
                    log_every=log_every,
                )
                self.step = step0 + result.steps
                if note := unreadable.report():
                    self.log(note)
                if result.interrupted:
                    self.steps_into_epoch = skip + result.steps
                    self.save("last.pt")
                    signum = stop.signum or signal.SIGTERM
                    self.log(
                        f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {self.step}; "
                        f"saved {self.run_dir / 'last.pt'} (continue with --resume {self.run_dir / 'last.pt'})"
                    )
                    return self._result(started, interrupted_by=signum)
                self.epoch, self.steps_into_epoch = epoch + 1, 0
                row = self._validate(result)
                reporter.end_epoch(row)  # before last.pt: a crash in between re-runs the epoch, never drops its row
                self.save("last.pt")
                if row["is_best"]:
                    self.save("best.pt")
                if cfg.log_internals:  # every rank runs it: a SyncBatchNorm forward is collective
                    with torch.random.fork_rng(devices=[]):  # a loader's iterator draws its seed from the global RNG
                        images, labels = next(iter(self.val_loader))  # the same first batch every epoch
                    x, y = prepare_batch(self.parts, images), labels.to(self.device)
                    reporter.log_scalars(measure_internals(self.network, x, y), self.step)
                reporter.message(self._summary_line(row, epochs))
        finally:
            stop.restore()
            reporter.close()
        return self._result(started)

    def _validate(self, result) -> dict[str, Any]:
        broadcast_buffers(self.network)  # evaluate (and save) rank 0's BN statistics on every rank
        if self.ema is not None:
            broadcast_buffers(self.ema)
        raw = evaluate(self.network, self.val_loader, self.parts)
        ema_metrics = evaluate(self.ema.module, self.val_loader, self.parts) if self.ema is not None else None
        deployed = ema_metrics or raw  # what model_from_checkpoint(use_ema=True) will load
        self.metrics = {k: deployed[k] for k in ("top1", "top5", "loss")}
        is_best = self.metrics["top1"] > self.best_top1
        if is_best:
            self.best_top1 = self.metrics["top1"]
        return {
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": result.loss,
            "train_top1": result.top1,
            "val_loss": raw["loss"],
            "val_top1": raw["top1"],
            "val_top5": raw["top5"],
            "ema_val_top1": ema_metrics["top1"] if ema_metrics else None,
            "epoch_seconds": result.seconds,
            "train_img_per_s": result.images / max(result.seconds, 1e-9),
            "is_best": is_best,
        }

    def _summary_line(self, row: dict[str, Any], epochs: int) -> str:
        ema = f"  ema top1 {row['ema_val_top1']:.2f}" if row.get("ema_val_top1") is not None else ""
        return (
            f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f}  "
            f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f} top5 {row['val_top5']:.2f}{ema}  "
            f"lr {row['lr']:.4g}  {row['train_img_per_s']:.0f} img/s  {row['epoch_seconds']:.1f}s"
            + ("  *best*" if row["is_best"] else "")
        )

    def save(self, file_name: str) -> None:
        """Write a checkpoint (all ranks call it: RNG states are gathered; rank 0 writes)."""
        rng = all_gather_objects(rng_state())
        if not self.dist.is_main:
            return
        ckpt = Checkpoint(
            arch=self.config.arch,
            arch_kwargs=self.arch_kwargs,
            class_names=list(self.class_names),
            preprocess=self.preprocess,
            model=self.network.state_dict(),
            ema=self.ema.module.state_dict() if self.ema is not None else None,
            ema_updates=int(self.ema.n_averaged) if self.ema is not None else 0,
            metrics=self.metrics,
            config=self.config.to_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else {},
            epoch=self.epoch,
            step=self.step,
            steps_into_epoch=self.steps_into_epoch,
            best_top1=self.best_top1,
            rng=rng,
            versions={"torch": str(torch.__version__)},
        )
        save_checkpoint_file(ckpt, self.run_dir / file_name)

    def _result(self, started: float, interrupted_by: int | None = None) -> RunResult:
        return RunResult(
            run_dir=self.run_dir,
            best_top1=self.best_top1,
            final_metrics=self.metrics,
            epochs_done=self.epoch,
            interrupted_by=interrupted_by,
            seconds=time.perf_counter() - started,
        )
