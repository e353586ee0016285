"""Export trained checkpoints to TorchScript and ONNX, verify them, and pick the best experiment on validation."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from echoflow import __version__
from echoflow.atomic import atomic_output, write_text

log = logging.getLogger("echoflow.export")

ONNX_OPSET = 17
# Largest allowed difference between checkpoint logits and exported logits. Float32 kernels differ in
# summation order between runtimes, which moves logits by about 1e-6 on these models.
ATOL = 1e-4
RTOL = 1e-3
# Files of one export; results/best_model/ receives the same names.
EXPORT_FILES = ("model.ts", "model.onnx", "preprocess.json")


class ExportError(RuntimeError):
    """An exported model whose outputs differ from the checkpoint's."""


def sha256(path: str | Path) -> str:
    """Return the hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_shape(checkpoint: dict) -> list[int]:
    """Return the batch-1 input shape [1, 1, K, H, W] a checkpoint expects."""
    preprocess = checkpoint["preprocess"]
    width, height = preprocess["size"]
    return [1, 1, int(preprocess["frames_per_clip"]), int(height), int(width)]


def preprocess_description(checkpoint: dict, checkpoint_path: str | Path) -> dict:
    """Describe the input an exported model expects, enough to feed it frames without echoflow."""
    preprocess = checkpoint["preprocess"]
    shape = input_shape(checkpoint)
    return {
        "experiment": checkpoint.get("experiment_name"),
        "arch": checkpoint.get("arch"),
        "arch_args": checkpoint.get("arch_args", {}),
        "input": {
            "name": "clip", "dtype": "float32", "shape": ["batch", *shape[1:]], "layout": "N, channel, frame, height, width",
            "value_range": [0.0, 1.0], "scaling": "stored uint8 grayscale frame / 255",
        },
        "output": {
            "name": "logits", "shape": ["batch", 2], "class_names": checkpoint.get("class_names", ["background", "4CV"]),
            "probability": "softmax over axis 1; column 1 is the 4CV probability",
        },
        "clip": {
            "frames_per_clip": int(preprocess["frames_per_clip"]),
            "stride": int(preprocess.get("clip_stride", 1)),
            "window": "frames_per_clip stored frames, every stride-th, ending at the frame being classified",
        },
        # Frame preparation from the source capture: crop box, sector mask, size [width, height] and the
        # decoder frame stride, exactly as the training frame stores were made.
        "frames": {key: value for key, value in preprocess.items() if key not in ("frames_per_clip", "clip_stride")},
        "checkpoint_sha256": sha256(checkpoint_path),
        "echoflow_version": __version__,
        "torch_version": torch.__version__,
        "onnx_opset": ONNX_OPSET,
    }


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, target: str | Path) -> None:
    """Trace, freeze and save ``model`` as TorchScript."""
    with torch.no_grad(), warnings.catch_warnings():
        # Input shape checks in forward() are constant for a fixed clip shape, which is what tracing warns about.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 marks TorchScript as deprecated; it still loads in C++ (libtorch) without Python.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model.eval(), example)
        frozen = torch.jit.freeze(traced)
    with atomic_output(target) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(frozen, str(temporary))


def export_onnx(model: torch.nn.Module, example: torch.Tensor, target: str | Path) -> None:
    """Export ``model`` to ONNX with a dynamic batch axis and check the graph."""
    import onnx

    with atomic_output(target) as temporary, warnings.catch_warnings():
        # The torch.export-based exporter, default since torch 2.9, needs the onnxscript package, which
        # is not a dependency; the TorchScript-based exporter handles these convolutional models.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model.eval(), (example,), str(temporary), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["clip"], output_names=["logits"],
                          dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}})
        onnx.checker.check_model(onnx.load(str(temporary)))


def verify(model: torch.nn.Module, torchscript_path: str | Path, onnx_path: str | Path, shape: list[int],
           seed: int = 0, samples: int = 4) -> dict:
    """Compare checkpoint logits with both exports on seeded random clips at batch sizes 1 and 3.

    Raises:
        ExportError: when any logit differs by more than ATOL + RTOL * |checkpoint logit|.
    """
    from echoflow.latency import onnx_runner

    generator = torch.Generator().manual_seed(seed)
    batches = [torch.rand(shape, generator=generator) for _ in range(samples)]
    batches.append(torch.rand([3, *shape[1:]], generator=generator))
    scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    onnx_run = onnx_runner(onnx_path, threads=1)
    differences = {"torchscript": 0.0, "onnxruntime": 0.0}
    for batch in batches:
        with torch.inference_mode():
            reference = model(batch).numpy()
            outputs = {"torchscript": scripted(batch).numpy(), "onnxruntime": onnx_run(batch.numpy())}
        for name, output in outputs.items():
            if output.shape != reference.shape:
                raise ExportError(f"{name} export returns shape {output.shape} for input {tuple(batch.shape)}; "
                                  f"the checkpoint returns {reference.shape}. Re-export with a dynamic batch axis.")
            if not np.allclose(output, reference, atol=ATOL, rtol=RTOL):
                worst = float(np.abs(output - reference).max())
                raise ExportError(f"{name} export differs from the checkpoint by up to {worst:.3g} in the logits "
                                  f"(allowed {ATOL} + {RTOL} x |logit|); the export is not equivalent. Check the "
                                  "model for layers that trace differently, such as dropout left in training mode.")
            differences[name] = max(differences[name], float(np.abs(output - reference).max()))
    return {"max_abs_diff": differences, "atol": ATOL, "rtol": RTOL, "batches": len(batches),
            "batch_sizes": sorted({int(batch.shape[0]) for batch in batches}), "seed": seed, "passed": True}


def export_checkpoint(checkpoint_path: str | Path, torchscript_path: str | Path, onnx_path: str | Path,
                      preprocess_path: str | Path, verification_path: str | Path) -> dict:
    """Export one checkpoint to TorchScript and ONNX, verify both, and write the preprocessing description."""
    from echoflow.checkpoint import load_model

    model, checkpoint = load_model(checkpoint_path)
    model.eval()
    shape = input_shape(checkpoint)
    example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    export_torchscript(model, example, torchscript_path)
    export_onnx(model, example, onnx_path)
    verification = verify(model, torchscript_path, onnx_path, shape)
    log.info("exports match the checkpoint: %s", verification["max_abs_diff"])
    write_text(preprocess_path, json.dumps(preprocess_description(checkpoint, checkpoint_path), indent=2) + "\n")
    write_text(verification_path, json.dumps(verification, indent=2) + "\n")
    return verification


def validation_score(checkpoint_path: str | Path, history_path: str | Path, metric: str) -> float:
    """Return the validation figure ``metric`` ("val_loss" or "val_accuracy") of a trained experiment.

    The checkpoint's ``val_metrics`` (the saved epoch's values) are used; history.tsv at ``best_epoch``
    is the fallback for checkpoints without them.
    """
    key = metric.removeprefix("val_")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    value = (checkpoint.get("val_metrics") or {}).get(key)
    if value is None:
        history = pd.read_csv(history_path, sep="\t")
        if metric not in history.columns or history.empty:
            raise ValueError(f"{history_path}: no column {metric!r} or no rows; expected the training history "
                             "with val_loss and val_accuracy. Rerun training for this experiment.")
        best_epoch = checkpoint.get("best_epoch")
        rows = history[history["epoch"] == best_epoch] if best_epoch is not None else history.iloc[0:0]
        value = rows[metric].iloc[0] if not rows.empty else (
            history[metric].min() if metric == "val_loss" else history[metric].max())
    return float(value)


def select_best(candidates: dict[str, dict], metric: str) -> tuple[str, pd.DataFrame]:
    """Choose the experiment with the lowest val_loss or the highest val_accuracy.

    Args:
        candidates: experiment name -> {"checkpoint": path, "history": path}, in config order; ties keep
            the earlier experiment.

    Returns:
        (best experiment name, table of every candidate's score and rank)
    """
    if metric not in ("val_loss", "val_accuracy"):
        raise ValueError(f"evaluation.select_metric is {metric!r}; expected 'val_loss' or 'val_accuracy'.")
    rows = []
    for name, paths in candidates.items():
        rows.append({"experiment": name, metric: validation_score(paths["checkpoint"], paths["history"], metric)})
    table = pd.DataFrame(rows)
    usable = table[table[metric].map(lambda value: not math.isnan(value))]
    if usable.empty:
        raise ValueError(f"No experiment has a finite {metric}; check results/models/*/history.tsv for "
                         "training runs that diverged.")
    ascending = metric == "val_loss"
    order = usable.sort_values(metric, ascending=ascending, kind="stable")
    best = str(order["experiment"].iloc[0])
    table["rank"] = table["experiment"].map({name: rank + 1 for rank, name in enumerate(order["experiment"])})
    table["selected"] = table["experiment"] == best
    return best, table


def install_best(best: str, export_dir: str | Path, target_dir: str | Path, table: pd.DataFrame, metric: str) -> None:
    """Copy the best experiment's export into ``target_dir`` with a README naming it and the selection table."""
    export_dir, target_dir = Path(export_dir), Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FILES:
        with atomic_output(target_dir / name) as temporary:
            shutil.copyfile(export_dir / name, temporary)
    with atomic_output(target_dir / "selection.tsv") as temporary:
        table.to_csv(temporary, sep="\t", index=False)
    score = float(table.loc[table["experiment"] == best, metric].iloc[0])
    description = json.loads((export_dir / "preprocess.json").read_text(encoding="utf-8"))
    shape = description["input"]["shape"]
    readme = f"""Best echoflow model: experiment {best}

Chosen on the validation split by {metric} = {score:.6g} ({'lowest' if metric == 'val_loss' else 'highest'}
of {len(table)} experiments; see selection.tsv). The test split played no part in the choice.

Files
  model.ts         TorchScript (traced and frozen); torch.jit.load("model.ts")
  model.onnx       ONNX (opset {description['onnx_opset']}), input "clip", output "logits", dynamic batch axis
  preprocess.json  the input the model expects and how frames were prepared
  selection.tsv    validation score and rank of every experiment

Input: float32 {shape} with values in [0, 1] (uint8 grayscale frames / 255), the
{description['clip']['frames_per_clip']} stored frames ending at the frame to classify, taking every
{description['clip']['stride']}-th frame. Output: logits [batch, 2]; softmax column 1 is the 4CV probability.
"""
    write_text(target_dir / "README.txt", readme)
