"""Train one experiment on a segment set: data loading, training loop, early stopping and resume."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from echoflow import checkpoint
from echoflow.atomic import atomic_output
from echoflow.augment import Augmentation, augment_batch
from echoflow.models import build, count_parameters
from echoflow.training_settings import resolve_settings

log = logging.getLogger("echoflow.training")

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"]
# Classes whose counts differ by more than this factor get a class-weighted loss even without balance "weights".
IMBALANCE_RATIO = 1.5
RESUME_FORMAT = 1
# Training clips used to re-estimate batch-norm statistics after each epoch.
BATCH_NORM_CLIPS = 256


@dataclasses.dataclass
class SegmentSet:
    """Clips of one split held in memory as uint8, with the attributes training reads."""

    path: Path
    clips: torch.Tensor        # uint8 [n, K, H, W]
    labels: torch.Tensor       # int64 [n], 0 background, 1 4CV
    balance: str
    frames_per_clip: int
    stride: int

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=2).tolist()


def read_segments(path: str | Path) -> SegmentSet:
    """Read ``clips``, ``labels`` and attributes of a segment file into memory.

    Raises:
        ValueError: if a dataset or attribute is missing or the shapes disagree.
    """
    path = Path(path)
    with h5py.File(path, "r") as store:
        for name in ("clips", "labels"):
            if name not in store:
                raise ValueError(f"Segment file {path} has no dataset {name!r}; rerun the segments rule.")
        clips = store["clips"][()]
        labels = store["labels"][()]
        attrs = dict(store.attrs)
    if clips.ndim != 4 or clips.dtype != np.uint8:
        raise ValueError(f"Segment file {path}: expected 'clips' uint8 [n, K, H, W], found {clips.dtype} {clips.shape}.")
    if labels.shape != (clips.shape[0],):
        raise ValueError(f"Segment file {path}: 'labels' has shape {labels.shape}, expected ({clips.shape[0]},).")
    if labels.size and not set(np.unique(labels).tolist()) <= {0, 1}:
        raise ValueError(f"Segment file {path}: labels must be 0 or 1, found {sorted(np.unique(labels).tolist())}.")
    return SegmentSet(
        path=path,
        clips=torch.from_numpy(clips),
        labels=torch.from_numpy(labels.astype(np.int64)),
        balance=str(attrs.get("balance", "none")),
        frames_per_clip=int(attrs.get("frames_per_clip", clips.shape[1])),
        stride=int(attrs.get("stride", 1)),
    )


def class_weights(segments: SegmentSet) -> torch.Tensor | None:
    """Return loss weights n / (2 * count) per class, or None when the classes need no weighting.

    Weights are used when the set was sampled with balance "weights", or when one class has more than
    IMBALANCE_RATIO times the clips of the other.
    """
    counts = segments.class_counts()
    if min(counts) == 0:
        return None
    if segments.balance != "weights" and max(counts) / min(counts) <= IMBALANCE_RATIO:
        return None
    total = sum(counts)
    return torch.tensor([total / (2 * count) for count in counts], dtype=torch.float32)


def iterate_batches(segments: SegmentSet, batch_size: int, device: torch.device,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (clips float [B, 1, K, H, W] in [0, 1], labels [B]) on ``device``.

    With a generator the order is shuffled and a final batch of one clip is dropped, because batch
    normalisation cannot train on a single clip. Without one, every clip is visited in file order.
    """
    count = len(segments)
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    if generator is not None and count % batch_size == 1 and count > 1:
        order = order[:-1]
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        clips = segments.clips[index].to(device, non_blocking=True)
        labels = segments.labels[index].to(device, non_blocking=True)
        yield clips.unsqueeze(1).float().div_(255), labels


def count_batches(segments: SegmentSet, batch_size: int, shuffled: bool) -> int:
    count = len(segments)
    if shuffled and count % batch_size == 1 and count > 1:
        count -= 1
    return math.ceil(count / batch_size)


def make_optimizer(model: torch.nn.Module, settings: dict) -> torch.optim.Optimizer:
    """Create the optimizer an experiment names ("adam" or "sgd" with momentum)."""
    if settings["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"])
    if settings["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings["learning_rate"], momentum=settings["momentum"],
                               weight_decay=settings["weight_decay"])
    raise ValueError(f"optimizer {settings['optimizer']!r} is not supported; expected 'adam' or 'sgd'.")


@dataclasses.dataclass
class Context:
    """Everything one epoch needs besides the model."""

    device: torch.device
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    augmentation: Augmentation | None
    batch_size: int
    train_weights: torch.Tensor | None
    val_weights: torch.Tensor | None

    def autocast(self):
        # NOTE: the CUDA path (float16 autocast with GradScaler) has not been run on a GPU yet.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def train_one_epoch(model: torch.nn.Module, segments: SegmentSet, context: Context, description: str) -> tuple[float, float]:
    """Run one pass over the training set and return (mean loss, accuracy)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    batches = iterate_batches(segments, context.batch_size, context.device, context.generator)
    progress = tqdm(batches, total=count_batches(segments, context.batch_size, True), desc=description,
                    file=sys.stderr, ascii=True, mininterval=30, dynamic_ncols=False)
    for clips, labels in progress:
        if context.augmentation is not None:
            clips = augment_batch(clips, context.augmentation, context.generator)
        context.optimizer.zero_grad(set_to_none=True)
        with context.autocast():
            logits = model(clips)
            loss = F.cross_entropy(logits.float(), labels, weight=context.train_weights)
        context.scaler.scale(loss).backward()
        context.scaler.step(context.optimizer)
        context.scaler.update()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    progress.close()
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, segments: SegmentSet, context: Context,
                           max_clips: int = BATCH_NORM_CLIPS) -> None:
    """Replace batch-norm running statistics by their average over up to ``max_clips`` training clips.

    The running averages kept during an epoch trail the weights, which change fast in short runs. A model
    evaluated with them can predict one class for every clip although its training-mode accuracy is high.
    The clips are read in file order without augmentation, so the result is deterministic.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers or len(segments) == 0:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # None makes the running statistics a cumulative average.
    model.train()
    subset = dataclasses.replace(segments, clips=segments.clips[:max_clips], labels=segments.labels[:max_clips])
    for clips, _ in iterate_batches(subset, context.batch_size, context.device):
        with context.autocast():
            model(clips)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


@torch.no_grad()
def evaluate(model: torch.nn.Module, segments: SegmentSet, context: Context,
             weights: torch.Tensor | None = None) -> tuple[float, float]:
    """Return (mean loss, accuracy) of ``model`` on a segment set; NaN for both when the set is empty."""
    if len(segments) == 0:
        return math.nan, math.nan
    model.eval()
    total_loss, correct = 0.0, 0
    for clips, labels in iterate_batches(segments, context.batch_size, context.device):
        with context.autocast():
            logits = model(clips).float()
        # A sum over the batch divided by the summed weights gives the same mean as one pass over the set.
        total_loss += F.cross_entropy(logits, labels, weight=weights, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    norm = len(segments) if weights is None else weights.cpu()[segments.labels].sum().item()
    return total_loss / norm, correct / len(segments)


@dataclasses.dataclass
class Progress:
    """History, best weights and early-stopping counter of a run, saved after each epoch for resuming."""

    epoch: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int = 0
    best_loss: float = math.inf
    epochs_without_improvement: int = 0

    def record(self, row: dict, model: torch.nn.Module, selection_loss: float) -> bool:
        """Append an epoch's row and keep the weights if ``selection_loss`` is the lowest so far (then return True)."""
        self.epoch = row["epoch"]
        self.history.append(row)
        if selection_loss < self.best_loss:
            self.best_loss = selection_loss
            self.best_epoch = row["epoch"]
            self.best_state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False


def fingerprint(settings: dict, sampling: dict, preprocess: dict, inputs: list[Path]) -> str:
    """Hash the settings and input files, so resume state written for other ones is not reused."""
    files = [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in inputs]
    payload = json.dumps([RESUME_FORMAT, settings, sampling, preprocess, files, torch.__version__],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def save_resume_state(path: Path, key: str, model: torch.nn.Module, context: Context, progress: Progress) -> None:
    """Write model, optimizer, random number generator states and progress to ``path`` atomically."""
    state = {
        "fingerprint": key,
        "model": model.state_dict(),
        "optimizer": context.optimizer.state_dict(),
        "scaler": context.scaler.state_dict(),
        "generator": context.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "progress": dataclasses.asdict(progress),
    }
    with atomic_output(path) as temporary:
        torch.save(state, temporary)


def load_resume_state(path: Path, key: str, model: torch.nn.Module, context: Context) -> Progress | None:
    """Restore a saved state into ``model`` and ``context``; return None when there is none or it is stale."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # A truncated or foreign file: start again rather than fail.
        log.warning("Ignoring resume state %s, which could not be read (%s); training from epoch 1.", path, error)
        return None
    if state.get("fingerprint") != key:
        log.warning("Ignoring resume state %s: it was written for other settings or inputs; training from epoch 1.",
                    path)
        return None
    model.load_state_dict(state["model"])
    context.optimizer.load_state_dict(state["optimizer"])
    context.scaler.load_state_dict(state["scaler"])
    context.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(**state["progress"])


def remove_resume_state(path: Path) -> None:
    """Delete the resume state file, and its folder when that is left empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def select_device(requested: str | None = None) -> torch.device:
    """Return ``requested``, or CUDA when available, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def deterministic(device: torch.device, threads: int) -> Iterator[None]:
    """Use deterministic algorithms and ``threads`` CPU threads inside the block, restoring both after it."""
    previous_flag = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    # CUDA has no deterministic kernel for some operations, so there a warning replaces the error.
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_flag)
        torch.set_num_threads(previous_threads)


def check_segments(train: SegmentSet, val: SegmentSet, sampling: dict) -> None:
    """Raise ValueError if the segment sets cannot train a two-class model with these sampling settings."""
    counts = train.class_counts()
    if min(counts) == 0:
        raise ValueError(f"Training set {train.path} has {counts[0]} background and {counts[1]} 4CV clips; "
                         "both classes are needed. Check the annotations and the split.")
    expected = sampling.get("frames_per_clip")
    for segments in (train, val):
        if expected is not None and segments.frames_per_clip != expected:
            raise ValueError(f"Segment file {segments.path} has frames_per_clip {segments.frames_per_clip}, but the "
                             f"experiment's sampling sets {expected}; rerun the segments rule.")
        if len(segments) and segments.clips.shape[1:] != train.clips.shape[1:]:
            raise ValueError(f"Segment file {segments.path} has clips of shape {list(segments.clips.shape[1:])}, "
                             f"but {train.path} has {list(train.clips.shape[1:])}; rerun the segments rule.")


@dataclasses.dataclass
class TrainingJob:
    """Inputs, outputs and settings of one experiment's training."""

    train_path: Path
    val_path: Path
    model_path: Path
    history_path: Path
    resume_path: Path
    experiment_name: str
    settings: dict
    sampling: dict
    preprocess: dict
    threads: int = 1
    device: str | None = None


def run(job: TrainingJob, epoch_callback: Callable[[int], None] | None = None) -> Progress:
    """Train one experiment, resuming from ``job.resume_path`` if a compatible state exists.

    Writes the checkpoint and history, then deletes the resume state's folder. ``epoch_callback(epoch)`` is
    called after each finished epoch, once its resume state is on disk.
    """
    settings = resolve_settings(job.settings)
    device = select_device(job.device)
    threads = max(1, min(job.threads, os.cpu_count() or 1))
    train = read_segments(job.train_path)
    val = read_segments(job.val_path)
    check_segments(train, val, job.sampling)
    log.info("training set %s: %d clips of %s, classes %s, balance %s", train.path, len(train),
             list(train.clips.shape[1:]), train.class_counts(), train.balance)
    log.info("validation set %s: %d clips, classes %s", val.path, len(val), val.class_counts())
    if len(val) == 0:
        log.warning("Validation set %s is empty; early stopping and the best epoch use the training loss.", val.path)

    with deterministic(device, threads):
        progress, model = _train(job, settings, train, val, device, threads, epoch_callback)

    if progress.best_state is None:
        raise ValueError(f"Training {job.experiment_name} produced no finite loss in {progress.epoch} epochs "
                         f"(history: {progress.history}); lower learning_rate and rerun.")
    best_row = next(row for row in progress.history if row["epoch"] == progress.best_epoch)
    model.load_state_dict(progress.best_state)
    _write_outputs(job, settings, train, model, progress, best_row)
    remove_resume_state(job.resume_path)
    log.info("best epoch %d: val_loss %.4f, val_accuracy %.4f; wrote %s", progress.best_epoch,
             best_row["val_loss"], best_row["val_accuracy"], job.model_path)
    return progress


def _train(job: TrainingJob, settings: dict, train: SegmentSet, val: SegmentSet, device: torch.device,
           threads: int, epoch_callback: Callable[[int], None] | None) -> tuple[Progress, torch.nn.Module]:
    torch.manual_seed(settings["seed"])
    model = build(settings["model"], train.frames_per_clip, **settings["model_args"]).to(device)
    log.info("model %s %s: %d trainable parameters; device %s, %d threads", settings["model"],
             settings["model_args"], count_parameters(model), device, threads)
    context = Context(
        device=device,
        optimizer=make_optimizer(model, settings),
        scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda"),
        generator=torch.Generator().manual_seed(settings["seed"]),
        augmentation=Augmentation.from_setting(settings["augment"]),
        batch_size=settings["batch_size"],
        train_weights=_to(class_weights(train), device),
        val_weights=_to(class_weights(val), device),
    )
    log.info("class weights: training %s, validation %s; augmentation %s", _list(context.train_weights),
             _list(context.val_weights), context.augmentation)

    key = fingerprint(settings, job.sampling, job.preprocess, [job.train_path, job.val_path])
    progress = load_resume_state(job.resume_path, key, model, context)
    if progress is None:
        progress = Progress()
    else:
        log.info("resuming from %s after epoch %d", job.resume_path, progress.epoch)

    while progress.epoch < settings["max_epochs"] and progress.epochs_without_improvement < settings["patience"]:
        epoch = progress.epoch + 1
        started = time.perf_counter()
        train_loss, train_accuracy = train_one_epoch(model, train, context, f"epoch {epoch}/{settings['max_epochs']}")
        recalibrate_batch_norm(model, train, context)
        val_loss, val_accuracy = evaluate(model, val, context, context.val_weights)
        row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy, "val_loss": val_loss,
               "val_accuracy": val_accuracy, "learning_rate": context.optimizer.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - started, 3)}
        improved = progress.record(row, model, train_loss if len(val) == 0 else val_loss)
        save_resume_state(job.resume_path, key, model, context, progress)
        log.info("epoch %d: train_loss %.4f train_accuracy %.4f val_loss %.4f val_accuracy %.4f (%.1f s)%s", epoch,
                 train_loss, train_accuracy, val_loss, val_accuracy, row["seconds"], " best" if improved else "")
        if epoch_callback is not None:
            epoch_callback(epoch)

    if progress.epochs_without_improvement >= settings["patience"]:
        log.info("stopped early after epoch %d: no better validation loss for %d epochs", progress.epoch,
                 progress.epochs_without_improvement)
    return progress, model


def _write_outputs(job: TrainingJob, settings: dict, train: SegmentSet, model: torch.nn.Module,
                   progress: Progress, best_row: dict) -> None:
    preprocess = {**job.preprocess, "frames_per_clip": train.frames_per_clip, "clip_stride": train.stride}
    checkpoint.save(
        job.model_path, model,
        arch=settings["model"],
        arch_args={"frames_per_clip": train.frames_per_clip, **settings["model_args"]},
        preprocess=preprocess,
        experiment=settings,
        experiment_name=job.experiment_name,
        best_epoch=progress.best_epoch,
        val_metrics={"loss": best_row["val_loss"], "accuracy": best_row["val_accuracy"]},
        extra={"sampling": dict(job.sampling), "input_size": list(train.clips.shape[1:])},
    )
    with atomic_output(job.history_path) as temporary:
        pd.DataFrame(progress.history, columns=HISTORY_COLUMNS).to_csv(temporary, sep="\t", index=False)


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _list(tensor: torch.Tensor | None) -> list[float] | None:
    return None if tensor is None else [round(value, 4) for value in tensor.tolist()]
