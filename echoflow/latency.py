"""Measure batch-1 CPU inference time of a trained model in several runtimes and its sliding-window throughput."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from echoflow.timeline import window_indices

log = logging.getLogger("echoflow.latency")

Runner = Callable[[np.ndarray], np.ndarray]


def _torch_runner(module: torch.nn.Module | torch.jit.ScriptModule, mode: str,
                  memory_format: torch.memory_format | None = None) -> Runner:
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad

    def run(clip: np.ndarray) -> np.ndarray:
        with context():
            tensor = torch.from_numpy(clip)
            if memory_format is not None:
                tensor = tensor.contiguous(memory_format=memory_format)
            return module(tensor).numpy()

    return run


def _channels_last_runner(model: torch.nn.Module) -> Runner:
    """Return the model with 2D convolution weights in channels-last layout (channels-last-3d for 3D ones)."""
    has_conv3d = any(isinstance(layer, torch.nn.Conv3d) for layer in model.modules())
    converted = _copy_module(model)
    if has_conv3d:
        converted = converted.to(memory_format=torch.channels_last_3d)
        return _torch_runner(converted, "inference_mode", torch.channels_last_3d)
    return _torch_runner(converted.to(memory_format=torch.channels_last), "inference_mode")


def _copy_module(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def onnx_runner(path: str | Path, threads: int) -> Runner:
    """Open an ONNX model in ONNX Runtime on the CPU with ``threads`` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(clip: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: clip})[0]

    return run


def build_runners(model: torch.nn.Module, torchscript_path: str | Path | None, onnx_path: str | Path | None,
                  threads: int) -> dict[str, Runner]:
    """Return one callable per runtime: eager (no_grad), inference_mode, channels_last, torchscript, onnxruntime.

    The TorchScript and ONNX runtimes load the exported files, so their timings are those of the
    artefacts that are deployed.
    """
    model = model.eval()
    runners: dict[str, Runner] = {
        "eager": _torch_runner(model, "no_grad"),
        "inference_mode": _torch_runner(model, "inference_mode"),
        "channels_last": _channels_last_runner(model),
    }
    if torchscript_path is not None:
        runners["torchscript"] = _torch_runner(torch.jit.load(str(torchscript_path), map_location="cpu"),
                                               "inference_mode")
    if onnx_path is not None:
        runners["onnxruntime"] = onnx_runner(onnx_path, threads)
    return runners


def time_runner(run: Runner, clip: np.ndarray, repeats: int, warmup: int = 10) -> dict:
    """Time ``repeats`` calls of ``run`` on one clip after ``warmup`` untimed calls.

    Returns:
        {"median_ms", "p95_ms", "mean_ms", "min_ms", "repeats"}, times in milliseconds.
    """
    for _ in range(warmup):
        run(clip)
    times = np.empty(repeats)
    for index in range(repeats):
        start = time.perf_counter_ns()
        run(clip)
        times[index] = (time.perf_counter_ns() - start) / 1e6
    return {"median_ms": float(np.median(times)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(times.mean()), "min_ms": float(times.min()), "repeats": int(repeats)}


def stream_throughput(run: Runner, frames: np.ndarray, frames_per_clip: int, stride: int) -> dict:
    """Run the sliding window one frame at a time, as a live capture would, and return frames per second.

    Each step converts the newest window from uint8 to float in [0, 1] and runs the model at batch 1, so
    the figure includes input preparation.

    Args:
        frames: stored frames uint8 [N, H, W].
    """
    start = time.perf_counter()
    for frame in range(len(frames)):
        clip = frames[window_indices(frame, frames_per_clip, stride)].astype(np.float32)[None, None] / 255.0
        run(clip)
    seconds = time.perf_counter() - start
    return {"frames": int(len(frames)), "seconds": seconds, "frames_per_s": len(frames) / seconds}


def measure(model: torch.nn.Module, checkpoint: dict, frames: np.ndarray, frame_rate: float,
            checkpoint_path: str | Path, torchscript_path: str | Path | None, onnx_path: str | Path | None,
            repeats: int, threads: int, stream_frames: int = 150) -> dict:
    """Time every runtime at batch 1 and the sliding window with the fastest one.

    Args:
        frames: stored frames uint8 [N, H, W] of one video; the first window is the timed clip.
        frame_rate: stored frames per second of that video, the real-time rate the stream must keep up with.

    Returns:
        The ``latency`` block of metrics.json; ``median_ms`` is that of the fastest runtime.
    """
    from echoflow.models import count_parameters

    torch.set_num_threads(threads)
    preprocess = checkpoint["preprocess"]
    frames_per_clip = int(preprocess["frames_per_clip"])
    stride = int(preprocess.get("clip_stride", 1))
    clip_index = window_indices(min(len(frames) - 1, (frames_per_clip - 1) * stride), frames_per_clip, stride)
    clip = np.ascontiguousarray(frames[clip_index].astype(np.float32)[None, None] / 255.0)

    runners = build_runners(model, torchscript_path, onnx_path, threads)
    runtimes = {}
    for name, run in runners.items():
        runtimes[name] = time_runner(run, clip, repeats)
        log.info("%s: median %.2f ms, p95 %.2f ms over %d runs", name, runtimes[name]["median_ms"],
                 runtimes[name]["p95_ms"], repeats)
    fastest = min(runtimes, key=lambda name: runtimes[name]["median_ms"])
    stream = stream_throughput(runners[fastest], frames[:stream_frames], frames_per_clip, stride)
    stream["video_frames_per_s"] = frame_rate
    stream["realtime_factor"] = stream["frames_per_s"] / frame_rate if frame_rate > 0 else None
    stream["runtime"] = fastest
    sizes = {"checkpoint_bytes": os.path.getsize(checkpoint_path)}
    if torchscript_path is not None:
        sizes["torchscript_bytes"] = os.path.getsize(torchscript_path)
    if onnx_path is not None:
        sizes["onnx_bytes"] = os.path.getsize(onnx_path)
    return {
        "median_ms": runtimes[fastest]["median_ms"],
        "p95_ms": runtimes[fastest]["p95_ms"],
        "runtime": fastest,
        "batch_size": 1,
        "threads": threads,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        # One-minute load average when timing ended; above the core count, other processes shared the CPU.
        "load_average_1min": os.getloadavg()[0],
        "torch_version": torch.__version__,
        "input_shape": list(clip.shape),
        "runtimes": runtimes,
        "parameters": int(count_parameters(model)),
        **sizes,
        "sliding_window": stream,
    }


def read_stream_frames(frame_stores: list[str | Path], count: int) -> tuple[np.ndarray, float, str]:
    """Read the first ``count`` frames of the first frame store that has frames.

    Returns:
        (frames uint8 [n, H, W], stored frames per second from the timestamps, frame store path)
    """
    import h5py

    for path in frame_stores:
        with h5py.File(path, "r") as store:
            if store["frames"].shape[0] < 2:
                continue
            frames = store["frames"][:count]
            timestamps_ms = store["timestamps_ms"][:count]
        frame_rate = 1000.0 / float(np.median(np.diff(timestamps_ms)))
        return frames, frame_rate, str(path)
    raise ValueError(f"None of the {len(frame_stores)} frame store(s) has two or more frames; the latency "
                     "stream needs real frames. Check results/qc/videos.tsv for excluded videos.")
