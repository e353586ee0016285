"""Time one model at batch 1 on the CPU in every runtime and write latency.json."""

import json

from echoflow.atomic import write_text
from echoflow.checkpoint import load_model
from echoflow.latency import measure, read_stream_frames
from echoflow.logs import log_to_file

log = log_to_file(snakemake.log[0])
model, checkpoint = load_model(snakemake.input.model)
frames, frame_rate, source = read_stream_frames(list(snakemake.input.frames), count=150)
log.info("stream frames from %s at %.2f stored frames/s", source, frame_rate)
result = measure(model, checkpoint, frames, frame_rate, snakemake.input.model, snakemake.input.torchscript,
                 snakemake.input.onnx, repeats=snakemake.params.repeats, threads=snakemake.params.threads)
result["sliding_window"]["source"] = source
write_text(snakemake.output.latency, json.dumps(result, indent=2) + "\n")
log.info("fastest runtime %s: median %.2f ms per clip; stream %.0f frames/s (%.1f x real time)",
         result["runtime"], result["median_ms"], result["sliding_window"]["frames_per_s"],
         result["sliding_window"]["realtime_factor"])
