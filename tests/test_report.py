"""HTML report: every section and experiment, escaped file names, and a clean render in headless Chromium."""

import html.parser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from echoflow import metrics, report, timeline

EXPERIMENTS = ("tiny_cnn", "wide_cnn")
HOSTILE_NAME = "P03/T1/notes <script>alert(1)</script>.txt"
SECTIONS = ("dataset", "class-counts", "samples", "models", "training", "confusion", "roc", "timelines", "provenance")


def write_tsv(path: Path, table: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(table).to_csv(path, sep="\t", index=False)
    return path


def write_segments(path: Path, seed: int) -> Path:
    """Write a segment set of 12 clips (2 frames of 16x16) from three participants, 4CV clips brighter."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1] * 6, dtype=np.uint8)
    clips = rng.integers(0, 120, size=(12, 2, 16, 16)).astype(np.uint8)
    clips[labels == 1] += 100
    strings = h5py.string_dtype()
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as store:
        store["clips"] = clips
        store["labels"] = labels
        store.create_dataset("video_id", data=[f"P0{i % 3 + 1}-T1" for i in range(12)], dtype=strings)
        store.create_dataset("participant", data=[f"P0{i % 3 + 1}" for i in range(12)], dtype=strings)
        store["start_frame"] = np.arange(12, dtype=np.int64) * 5
        store.create_dataset("interval", data=[f"bg-{i}" for i in range(12)], dtype=strings)
    return path


def brightness_forward(scale: float):
    """Return a classifier whose 4CV logit grows with the mean brightness of the newest frame."""
    def forward(clips):
        value = clips[:, 0, -1].mean(axis=(1, 2))
        return np.stack([np.zeros_like(value), (value - 0.45) * scale], axis=1)
    return forward


def write_frame_store(folder: Path, video_id: str, bright: list[tuple[int, int]], count: int = 120):
    frames = np.full((count, 16, 16), 40, dtype=np.uint8)
    for first, last in bright:
        frames[first:last] = 200
    with h5py.File(folder / "frames" / f"{video_id}.h5", "w") as store:
        store["frames"] = frames
        store["timestamps_ms"] = np.arange(count) * 100.0
        store.attrs["status"] = "ok"
        store.attrs["fps"] = 10.0
    intervals = [(first / 10, last / 10) for first, last in bright]
    labels = np.zeros(count, dtype=int)
    for first, last in bright:
        labels[first:last] = 1
    write_tsv(folder / "labels" / f"{video_id}.tsv",
              {"frame": range(count), "timestamp_ms": np.arange(count) * 100.0, "label": labels})
    write_tsv(folder / "labels" / f"{video_id}.intervals.tsv",
              {"interval": range(len(intervals)), "start_s": [s for s, _ in intervals],
               "end_s": [e for _, e in intervals], "start_frame": 0, "end_frame": 0, "status": "kept", "note": ""})


def latency_block(median_ms: float) -> dict:
    runtimes = {name: {"median_ms": median_ms * factor, "p95_ms": median_ms * factor * 1.2, "repeats": 5}
                for name, factor in (("eager", 3.0), ("torchscript", 2.0), ("onnxruntime", 1.0))}
    return {"median_ms": median_ms, "p95_ms": median_ms * 1.2, "runtime": "onnxruntime", "threads": 1,
            "runtimes": runtimes, "parameters": 1234, "checkpoint_bytes": 50000,
            "sliding_window": {"frames_per_s": 500.0, "realtime_factor": 50.0}}


def build_inputs(folder: Path) -> report.ReportInputs:
    """Write a small but complete set of report inputs with the evaluation functions themselves."""
    (folder / "frames").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    manifest = write_tsv(folder / "manifest.tsv", {
        "video_id": ["P01-T1", "P02-T1", "P03-T1", "P03-T2"], "participant": ["P01", "P02", "P03", "P03"],
        "session": ["T1", "T1", "T1", "T2"],
        "video": ["/raw/P01/T1/a.mp4", "/raw/P02/T1/b.mp4", "/raw/P03/T1/capture <img src=x onerror=alert(1)>.mp4", "/raw/P03/T2/d.mp4"],
        "annotation": ["a.json", "b.json", "c.json", ""], "status": ["ok", "ok", "ok", "excluded"],
        "reason": ["", "", "", "no annotation project next to the video"], "n_segments": [2, 1, 2, 0],
        "annotated_s": [6.0, 3.0, 5.0, 0.0]})
    ignored = write_tsv(folder / "qc" / "ignored_files.tsv", {"path": [HOSTILE_NAME], "reason": ["not a video"]})
    annotations = write_tsv(folder / "qc" / "annotations.tsv", {
        "video_id": ["P01-T1"], "annotation": ["a.json"], "segment": ["1_a"], "start_s": [1.0], "end_s": [4.0],
        "value": ["4CV"], "counted": [True], "note": [""]})
    videos = write_tsv(folder / "qc" / "videos.tsv", {
        "video_id": ["P01-T1", "P02-T1", "P03-T1", "P03-T2", "P04-T1"],
        "status": ["ok", "ok", "ok", "excluded", "excluded"],
        "reason": ["", "", "", "no annotation project next to the video", "decoder error at frame 12"],
        "stage": ["frames", "frames", "frames", "manifest", "frames"]})
    splits = write_tsv(folder / "splits.tsv", {"participant": ["P01", "P02", "P03"], "split": ["train", "val", "test"]})
    summary = write_tsv(folder / "segments" / "default" / "summary.tsv", {
        "split": ["train", "val", "test"], "background": [20, 5, 6], "4CV": [18, 4, 6]})
    train = write_segments(folder / "segments" / "default" / "train.h5", seed=1)
    test = write_segments(folder / "segments" / "default" / "test.h5", seed=2)
    write_frame_store(folder, "P03-T1", [(20, 50), (80, 110)])

    experiments = {}
    for index, name in enumerate(EXPERIMENTS):
        out = folder / "eval" / name
        forward = brightness_forward(scale=8.0 + 8 * index)
        result, predictions = metrics.evaluate_segments(forward, str(test), resamples=50, seed=0)
        result = {"experiment": name, "accuracy": result.pop("accuracy"), "f1": result.pop("f1"),
                  "roc_auc": result.pop("roc_auc"), "latency_ms": 1.0 + index, **result,
                  "latency": latency_block(1.0 + index), "checkpoint": {"arch": "squeezenet"}}
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(result))
        predictions.to_csv(out / "predictions.tsv", sep="\t", index=False)
        history = write_tsv(folder / "models" / name / "history.tsv", {
            "epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "train_accuracy": [0.5, 0.7, 0.8],
            "val_loss": [0.69, 0.55 - 0.1 * index, 0.6], "val_accuracy": [0.5, 0.7, 0.75],
            "learning_rate": [0.001] * 3, "seconds": [1.0] * 3})
        videos_table = timeline.split_videos(manifest, splits)
        timeline.write_timelines(forward, name, videos_table, folder / "frames", folder / "labels", 2, 1,
                                 timeline.TimelineSettings(smooth_s=0.5, min_interval_s=0.5), out / "timelines.tsv",
                                 out / "timelines.npz", out / "via")
        experiments[name] = report.ExperimentFiles(out / "metrics.json", out / "predictions.tsv", history,
                                                   out / "timelines.tsv", out / "timelines.npz")
    selection = write_tsv(folder / "best_model" / "selection.tsv", {
        "experiment": list(EXPERIMENTS), "val_loss": [0.55, 0.45], "rank": [2, 1], "selected": [False, True]})
    readme = folder / "best_model" / "README.txt"
    readme.write_text("Best echoflow model: experiment wide_cnn\n")
    return report.ReportInputs(manifest=manifest, ignored=ignored, annotations=annotations, videos=videos,
                               splits=splits, summaries={"default": summary}, sample_sets={"default": train},
                               experiments=experiments, selection=selection, best_readme=readme,
                               config={"raw_dir": "demo", "evaluation": {"bootstrap": 50}},
                               source_dir=Path(__file__).parent)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    inputs = build_inputs(folder / "results")
    output = folder / "eval_report.html"
    report.write_report(inputs, output)
    return output, output.read_text(encoding="utf-8")


class ReportParser(html.parser.HTMLParser):
    """Collect section ids, image sources, table row ids and every external reference."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.rows, self.external, self.scripts = [], [], {}, [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "tr" and attrs.get("id"):
            self.rows[attrs["id"]] = attrs.get("class", "")
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)


def parse(text: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(text)
    return parser


def test_report_has_every_section(rendered):
    _, text = rendered
    assert parse(text).sections == list(SECTIONS)


def test_report_lists_every_experiment(rendered):
    _, text = rendered
    parser = parse(text)
    for name in EXPERIMENTS:
        assert f"model-{name}" in parser.rows
        assert f"Timeline of P03-T1 for {name}" in text
        assert f"Confusion matrix of {name}" in text
    assert parser.rows["model-wide_cnn"] == "best"
    assert parser.rows["model-tiny_cnn"] == ""


def test_report_is_self_contained(rendered):
    _, text = rendered
    parser = parse(text)
    assert parser.external == []
    assert not re.search(r"https?://", text)
    # Montage, training curves, two confusion matrices, ROC and one timeline per experiment.
    assert len(parser.images) == 1 + 1 + 2 + 1 + 2
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)


def test_report_escapes_file_names(rendered):
    _, text = rendered
    assert "notes &lt;script&gt;alert(1)&lt;/script&gt;.txt" in text
    assert "<script>alert(1)" not in text
    assert "capture &lt;img src=x onerror=alert(1)&gt;.mp4" in text
    assert "<img src=x" not in text
    assert parse(text).scripts == 0


def test_report_names_git_commit(rendered):
    _, text = rendered
    assert re.search(r"<th>Git commit</th><td>[0-9a-f]{40}(\+dirty)?</td>", text)


def test_provenance_lists_each_package_once(rendered):
    _, text = rendered
    provenance = text[text.index('<section id="provenance">'):]
    packages = re.findall(r"<tr><th>([^<]+)</th><td>", provenance)
    assert packages.count("echoflow") == 1
    assert len(packages) == len(set(packages))
    assert "isal" in packages


def test_report_shows_data_qc(rendered):
    _, text = rendered
    assert text.count("no annotation project next to the video") == 1
    assert "decoder error at frame 12" in text
    assert "14.0 s" in text  # Annotated seconds of the three videos used.
    assert re.search(r"<th>Participants</th><td class=\"number\">3</td>", text)


# Headless Chromium ----------------------------------------------------------------------------------------------

# Appended to a copy of the page under test: after load, record how many images decoded.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((image) => !(image.complete && image.naturalWidth > 0)).length;
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-broken", String(broken));
});
</script>"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(page: Path, profile: Path) -> tuple[str, str]:
    """Open a copy of ``page`` with the image probe in headless Chromium; return the DOM and the browser log."""
    assert chromium_path(), "chromium not found on PATH; install it with .ci/install-chromium.sh"
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE + "</body>"), encoding="utf-8")
    command = [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
               "--dump-dom", probed.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr


def console_errors(browser_log: str) -> list[str]:
    """Return console messages and uncaught errors that Chromium logged for the page."""
    return [line for line in browser_log.splitlines()
            if ":CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line]


def image_counts(dom: str) -> tuple[int, int]:
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, "the image probe did not run; the page did not finish loading"
    return int(images.group(1)), int(broken.group(1))


needs_chromium = pytest.mark.skipif(chromium_path() is None and os.environ.get("CI") != "true",
                                    reason="chromium is not installed; run .ci/install-chromium.sh")


@pytest.mark.browser
@needs_chromium
def test_browser_probe_detects_faults(tmp_path):
    page = tmp_path / "faulty.html"
    page.write_text('<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA" alt="broken">'
                    '<script>console.error("deliberate failure");</script></body></html>', encoding="utf-8")
    dom, browser_log = browse(page, tmp_path / "profile")
    assert image_counts(dom) == (1, 1)
    assert any("deliberate failure" in line for line in console_errors(browser_log))


@pytest.mark.browser
@needs_chromium
def test_report_renders_in_chromium(rendered, tmp_path):
    page, _ = rendered
    dom, browser_log = browse(page, tmp_path / "profile")
    assert console_errors(browser_log) == []
    assert image_counts(dom) == (7, 0)
    for section in SECTIONS:
        assert f'id="{section}"' in dom
