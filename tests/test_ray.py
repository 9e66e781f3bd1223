"""`vidcom2 batch --ray`: a local Ray instance started once for the module, tiny models."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
from jsonl_files import jsonl, records
from tiny_models import TINY_PIXEL_BOUNDS
from typer.testing import CliRunner

from vidcom2_cli.batch.input import parse_lines, stream_input
from vidcom2_cli.batch.local import BatchOptions, run_batch
from vidcom2_cli.batch.output import ResultWriter, existing_ids
from vidcom2_cli.batch.ray import RayOptions, ray_workers, run_ray_batch
from vidcom2_cli.cli import app, with_ray_address
from vidcom2_cli.engine import Engine
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
VIDEOS = [str(SAMPLES / name) for name in ("color_change.mp4", "scene_cut.mp4", "counting.mp4")]
# Explicit pixel bounds: the Ray workers are other processes, which do not see the tiny bounds
# conftest sets as this process's defaults.
PIXELS = {"min_pixels": TINY_PIXEL_BOUNDS.min_pixels, "max_pixels": TINY_PIXEL_BOUNDS.max_pixels}
OPTIONS = BatchOptions(SamplingOptions(frames=4, **PIXELS), CompressionOptions(ratio=0.5),
                       GenerationOptions(max_new_tokens=3))
LOAD = LoadOptions(device="cpu")
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One Ray instance for the whole module (the runner joins it instead of starting one)."""
    # 4 logical CPUs on any machine: the module's pool and a CLI run's pool fit side by side
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tiny_checkpoints) -> str:
    return str(tiny_checkpoints("qwen2_vl"))


def rows(count: int) -> list[dict | str]:
    """Questions over the sample videos, with a missing video and a malformed line among them."""
    lines: list[dict | str] = [{"id": f"item-{n}", "video": VIDEOS[n % 3],
                                "question": f"Question {n}: what happens?"}
                               for n in range(count)]
    lines.insert(3, {"id": "gone", "video": "missing.mp4", "question": "Where is it?"})
    lines.insert(5, "{not json")
    return lines


def comparable(row: dict) -> tuple:
    tokens = row.get("tokens") or {}
    return (row.get("answer"), row.get("error"), tokens.get("prompt_kept"),
            tokens.get("visual_kept"), tokens.get("generated"))


@pytest.fixture(scope="module")
def local_records(model, tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ray")
    source = jsonl(folder / "in.jsonl", rows(12))
    engine = Engine.load(model, LOAD)
    out = folder / "local.jsonl"
    with ResultWriter.open(str(out)) as writer:
        run_batch(engine, parse_lines(source.read_bytes(), folder), OPTIONS, writer)
    return source, {row["id"]: comparable(row) for row in records(out.read_text())}


@pytest.fixture(scope="module")
def pool(model):
    """Two workers for the module's runs (Ray restarts the one a test kills)."""
    with ray_workers(RayOptions(workers=2), model, LOAD) as workers:
        yield workers


def ray_run(pool, source: Path, out: Path, ray_options: RayOptions,
            done: Counter | None = None, on_record=None) -> list[dict]:
    with ResultWriter.open(str(out)) as writer:
        run_ray_batch(pool, stream_input(str(source)), OPTIONS, ray_options, writer, done,
                      on_record)
    return records(out.read_text())


def test_two_workers_write_the_records_of_a_local_batch(pool, local_records, tmp_path):
    source, expected = local_records
    written = ray_run(pool, source, tmp_path / "out.jsonl",
                      RayOptions(workers=2, chunk=3))
    assert Counter(row["id"] for row in written) == Counter(list(expected))  # each id once
    assert {row["id"]: comparable(row) for row in written} == expected
    ordered = ray_run(pool, source, tmp_path / "ordered.jsonl",
                      RayOptions(workers=2, chunk=2, ordered=True))
    assert [row["id"] for row in ordered] == [  # input order; the malformed 6th line too
        line["id"] if isinstance(line, dict) else "line-6" for line in rows(12)]


def test_a_killed_worker_loses_and_repeats_nothing(pool, local_records, tmp_path):
    source, expected = local_records
    out = tmp_path / "out.jsonl"
    failure: list[BaseException] = []

    def run() -> None:
        try:
            ray_run(pool, source, out, RayOptions(workers=2, chunk=1))
        except BaseException as error:  # surfaced by the assertion below
            failure.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.05)
    pid, _ = ray.get(pool.actors[1].identity.remote())
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not failure, failure
    written = records(out.read_text())
    assert Counter(row["id"] for row in written) == Counter(list(expected))
    assert {row["id"]: comparable(row) for row in written} == expected  # no error from the kill


def test_driver_interrupted_then_resumed_writes_every_id_once(pool, local_records, tmp_path):
    source, expected = local_records
    out = tmp_path / "out.jsonl"

    def interrupt(summary) -> None:
        if summary.processed == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ray_run(pool, source, out, RayOptions(workers=2, chunk=2), on_record=interrupt)
    first = records(out.read_text())
    assert len(first) == 4 and out.read_text().endswith("\n")
    ray_run(pool, source, out, RayOptions(workers=2, chunk=2), done=existing_ids(out))
    final = records(out.read_text())
    assert Counter(row["id"] for row in final) == Counter(list(expected))


def test_cli_ray_local_and_summary(model, local_records, tmp_path):
    source, expected = local_records
    out = tmp_path / "cli.jsonl"
    result = runner.invoke(app, ["batch", str(source), "--out", str(out), "-m", model,
                                 "--frames", "4", "--ratio", "0.5", "--max-new-tokens", "3",
                                 "--device", "cpu", "--ray", "local", "--workers", "2",
                                 "--min-pixels", str(PIXELS["min_pixels"]),
                                 "--max-pixels", str(PIXELS["max_pixels"])])
    assert result.exit_code == 0, result.output
    assert {row["id"]: comparable(row) for row in records(out.read_text())} == expected
    assert "worker 0" in result.stderr and "worker 1" in result.stderr
    assert "items/s" in result.stderr
    # the closing line of a local run, from what ran the workers
    assert "vidcom2-cli" in result.stderr and "on 2 Ray workers" in result.stderr


def test_ray_option_takes_an_optional_address():
    assert with_ray_address(["batch", "in.jsonl", "--ray"]) == [
        "batch", "in.jsonl", "--ray", "local"]
    assert with_ray_address(["batch", "--ray", "in.jsonl"]) == [
        "batch", "--ray", "local", "in.jsonl"]
    assert with_ray_address(["batch", "x", "--ray", "--workers", "2"])[3] == "local"
    for address in ("auto", "ray://head:10001", "10.0.0.1:6379"):
        assert with_ray_address(["--ray", address]) == ["--ray", address]


@pytest.mark.parametrize(("args", "needle"), [
    (["--ray", "ray://127.0.0.1:1"], "nothing answers at ray://127.0.0.1:1"),
    (["--ray", "local", "--workers", "0"], "--workers"),
    (["--ray", "local", "--gpus-per-worker", "1", "--workers", "2"], "GPUs"),
    (["--workers", "2"], "only with --ray"),
])
def test_bad_ray_options_exit_2_with_one_line(model, local_records, tmp_path, args, needle):
    source, _ = local_records
    result = runner.invoke(app, ["batch", str(source), "--out", str(tmp_path / "o.jsonl"),
                                 "-m", model, *args])
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_without_ray_installed_one_line_names_the_extra(model, local_records, tmp_path,
                                                        monkeypatch):
    source, _ = local_records
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = runner.invoke(app, ["batch", str(source), "--out", str(tmp_path / "o.jsonl"),
                                 "-m", model, "--ray", "local"])
    assert result.exit_code == 2
    assert result.stderr.strip() == 'error: --ray: Ray is not installed; pip install ' \
                                    '"vidcom2-cli[ray]"'


def test_unreadable_model_on_the_workers_is_one_line(tmp_path, local_records):
    source, _ = local_records
    result = runner.invoke(app, ["batch", str(source), "--out", str(tmp_path / "o.jsonl"),
                                 "-m", str(tmp_path / "no-such-model"), "--ray", "local",
                                 "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "--model" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_relative_paths_are_resolved_on_the_driver(pool, tmp_path, monkeypatch):
    """The workers' working folder is not the driver's: a relative input and relative video
    paths still name the driver's files."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(Path(VIDEOS[0]).read_bytes())
    jsonl(folder / "in.jsonl", [{"id": "a", "video": "clip.mp4", "question": "What?"},
                                {"id": "b", "video": "clip.mp4", "question": "Who?"}])
    monkeypatch.chdir(tmp_path)
    with ResultWriter.open(str(tmp_path / "out.jsonl")) as writer:
        run_ray_batch(pool, stream_input("data/in.jsonl"), OPTIONS, RayOptions(workers=2),
                      writer)
    written = records((tmp_path / "out.jsonl").read_text())
    assert sorted(row["id"] for row in written) == ["a", "b"]
    assert not any("error" in row for row in written)
    assert {row["video"] for row in written} == {str(folder / "clip.mp4")}


def test_when_every_worker_is_gone_each_remaining_id_is_an_error(model, local_records,
                                                                 tmp_path):
    """No restarts allowed and both workers killed: the run still writes one record per id."""
    source, expected = local_records
    options = RayOptions(workers=2, chunk=2, retries=0)
    with ray_workers(options, model, LOAD) as workers:
        for actor in workers.actors:
            pid, _ = ray.get(actor.identity.remote())
            os.kill(pid, signal.SIGKILL)
        with ResultWriter.open(str(tmp_path / "out.jsonl")) as writer:
            summary = run_ray_batch(workers, stream_input(str(source)), OPTIONS, options,
                                    writer)
    written = records((tmp_path / "out.jsonl").read_text())
    assert Counter(row["id"] for row in written) == Counter(list(expected))
    assert all("error" in row for row in written)
    assert summary.total == len(expected) and summary.errors == len(expected)


def test_an_option_the_model_refuses_is_one_line_before_any_item(tiny_checkpoints,
                                                                 local_records, tmp_path):
    source, _ = local_records
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["batch", str(source), "--out", str(out), "-m",
                                 str(tiny_checkpoints("llava_onevision")), "--device", "cpu",
                                 "--ray", "local", "--workers", "1", "--min-pixels", "4096"])
    assert result.exit_code == 2, result.output
    assert "--min-pixels" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() or out.read_text() == ""


def test_a_short_input_is_spread_over_every_worker():
    """8 items and the default chunk of 16: one task would leave a worker idle; a video's
    questions still stay in one task."""
    from vidcom2_cli.batch.input import BatchItem
    from vidcom2_cli.batch.ray import _chunks

    def items(videos: list[str]) -> list[BatchItem]:
        return [BatchItem(line=index, id=f"q{index}", video=video, question="Q?", prompt="Q?")
                for index, video in enumerate(videos)]

    spread = list(_chunks(iter(items([f"v{i}.mp4" for i in range(8)])), 16, True,
                          lambda window: None, 2))
    assert [len(task) for task in spread] == [4, 4]
    together = list(_chunks(iter(items(["same.mp4"] * 8)), 16, True, lambda window: None, 2))
    assert [len(task) for task in together] == [8]
    long = list(_chunks(iter(items([f"v{i}.mp4" for i in range(200)])), 16, True,
                        lambda window: None, 2))
    assert max(len(task) for task in long) == 16 and sum(len(task) for task in long) == 200
