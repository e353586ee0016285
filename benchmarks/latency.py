"""Time every configured architecture at batch 1 on the CPU in each runtime and print name=value lines.

Usage: python benchmarks/latency.py [--repeats 200] [--threads 1] [--config config/config.yaml]

Untrained weights are used: inference time does not depend on the weight values. Run it on an idle
machine; other processes on the same cores inflate the numbers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from echoflow import checkpoint
from echoflow import config as echoflow_config
from echoflow.export import export_onnx, export_torchscript
from echoflow.latency import measure
from echoflow.models import build

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=ROOT / "config" / "config.yaml", help="workflow config file")
    parser.add_argument("--repeats", type=int, default=200, help="timed forward passes per runtime")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime")
    arguments = parser.parse_args()
    config = echoflow_config.load(arguments.config, ROOT / "config" / "schema.yaml")
    width, height = config["preprocess"]["size"]
    print(f"cpu_count={os.cpu_count()}")
    print(f"threads={arguments.threads}")
    print(f"torch={torch.__version__}")
    for name, settings in echoflow_config.experiments(config).items():
        sampling = config["sampling"][settings.get("sampling", "default")]
        frames_per_clip = int(sampling["frames_per_clip"])
        torch.manual_seed(0)
        model = build(settings["model"], frames_per_clip, **settings.get("model_args", {})).eval()
        preprocess = {**config["preprocess"], "frames_per_clip": frames_per_clip,
                      "clip_stride": int(sampling.get("stride", 1))}
        with tempfile.TemporaryDirectory(prefix="echoflow-latency-") as folder:
            folder = Path(folder)
            checkpoint.save(folder / "model.pt", model, arch=settings["model"],
                            arch_args={"frames_per_clip": frames_per_clip, **settings.get("model_args", {})},
                            preprocess=preprocess, experiment=settings, experiment_name=name, best_epoch=0,
                            val_metrics={})
            example = torch.rand(1, 1, frames_per_clip, height, width)
            export_torchscript(model, example, folder / "model.ts")
            export_onnx(model, example, folder / "model.onnx")
            frames = np.random.default_rng(0).integers(0, 256, size=(150, height, width), dtype=np.uint8)
            result = measure(model, {"preprocess": preprocess}, frames, 29.97, folder / "model.pt",
                             folder / "model.ts", folder / "model.onnx", arguments.repeats, arguments.threads)
        for runtime, timing in result["runtimes"].items():
            print(f"{name}.{runtime}.median_ms={timing['median_ms']:.3f}")
            print(f"{name}.{runtime}.p95_ms={timing['p95_ms']:.3f}")
        print(f"{name}.fastest={result['runtime']}")
        print(f"{name}.parameters={result['parameters']}")
        print(f"{name}.stream_frames_per_s={result['sliding_window']['frames_per_s']:.1f}")
        print(f"{name}.realtime_factor={result['sliding_window']['realtime_factor']:.2f}")
        print(f"{name}.load_average_1min={result['load_average_1min']:.2f}")


if __name__ == "__main__":
    main()
