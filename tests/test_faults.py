"""Faults: CUDA out of memory, Ctrl-C and kill during a batch, hostile ids, unsafe checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import weakref
from collections import Counter
from pathlib import Path

import pytest
import torch
import transformers
from jsonl_files import jsonl
from typer.testing import CliRunner, Result

from vidcom2_cli import engine as engine_module
from vidcom2_cli.batch.output import existing_ids
from vidcom2_cli.cli import app
from vidcom2_cli.models import LoadOptions, load_model
from vidcom2_cli.models.qwen_vl import QwenVLAdapter

SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
VIDEOS = [str(SAMPLES / name) for name in ("color_change.mp4", "scene_cut.mp4", "counting.mp4")]
FAST = ["--frames", "4", "--max-new-tokens", "3", "--device", "cpu"]
SCRIPT = Path(sys.executable).with_name("vidcom2")
OOM_MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
               "79.10 GiB of which 1.02 GiB is free.\nSecond line of the allocator report")
runner = CliRunner()


def many_rows(count: int) -> list[dict]:
    """``count`` items over the sample clips; every 10th names a missing video."""
    rows = []
    for number in range(count):
        video = "missing.mp4" if number % 10 == 9 else VIDEOS[number % len(VIDEOS)]
        rows.append({"id": f"item-{number}", "video": video,
                     "question": f"Question {number}: what happens in the video?"})
    return rows


def read_jsonl_strictly(path: Path) -> list[dict]:
    """Every line complete (newline-terminated) JSON object with an id; fails otherwise."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"partial last line: {data[-80:]!r}"
    rows = [json.loads(line) for line in data.splitlines()]
    assert all(isinstance(row, dict) and "id" in row for row in rows)
    return rows


def batch_in_order(tmp_path: Path, rows: list[dict], model: list[str], batch_size: int,
                   name: str = "out.jsonl", exit_code: int = 0) -> tuple[Result, list[dict]]:
    """Run ``vidcom2 batch --no-reuse`` on ``rows``: it must exit with ``exit_code`` (1 when
    every item fails) and write one record per row, in order."""
    source = jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / name
    result = runner.invoke(app, ["batch", str(source), "--out", str(out), "--batch-size",
                                 str(batch_size), "--no-reuse", *model])
    assert result.exit_code == exit_code, result.output
    written = read_jsonl_strictly(out)
    assert [row["id"] for row in written] == [row["id"] for row in rows]
    return result, written


def assert_each_id_once(rows: list[dict], expected: list[object]) -> None:
    ids = [row["id"] for row in rows]
    assert sorted(map(str, ids)) == sorted(map(str, expected)), (
        f"duplicates: {sorted({i for i in ids if ids.count(i) > 1})}, "
        f"missing: {sorted(set(map(str, expected)) - set(map(str, ids)))}")


def out_of_memory() -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(OOM_MESSAGE)


@pytest.fixture(scope="module")
def qwen(tiny_checkpoints) -> list[str]:
    return ["-m", str(tiny_checkpoints("qwen2_vl")), *FAST]


@pytest.fixture
def generate_calls(monkeypatch) -> list[object]:
    """The log of generate calls (their item counts) and of torch.cuda.empty_cache calls."""
    calls: list[object] = []
    real_empty_cache = torch.cuda.empty_cache

    def empty_cache() -> None:
        calls.append("empty_cache")
        real_empty_cache()

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    return calls


# --- CUDA out of memory ---------------------------------------------------------------------

def test_ask_out_of_memory_exits_1_with_one_hint_line(tiny_checkpoints, monkeypatch):
    def generate(self, items, options, **kwargs):
        raise out_of_memory()

    monkeypatch.setattr(engine_module.Engine, "_generate", generate)
    result = runner.invoke(app, ["ask", VIDEOS[0], "What happens?", "-m",
                                 str(tiny_checkpoints("qwen2_vl")), *FAST])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: out of memory")
    for option in ("--frames", "--ratio", "--batch-size"):
        assert option in lines[0]
    assert "Traceback" not in result.stderr and "Tried to allocate" not in result.stderr


def test_batch_out_of_memory_retries_each_item_alone(tmp_path, qwen, monkeypatch,
                                                     generate_calls):
    """OOM only on calls with several items: every item is still answered, alone, after the
    cache is emptied and with the failed call's activations already freed."""
    rows = [*many_rows(4), {"id": 99, "video": VIDEOS[2], "question": "Five?"}]
    _, alone = batch_in_order(tmp_path, rows, qwen, batch_size=1, name="alone.jsonl")

    real_generate = engine_module.Engine._generate
    activations: list[weakref.ref] = []
    freed_at_retry: list[bool] = []

    class Activation:  # stands for the tensors the failed forward pass held
        pass

    def generate(self, items, options, **kwargs):
        generate_calls.append(len(items))
        if len(items) > 1:
            activation = Activation()
            activations.append(weakref.ref(activation))
            raise out_of_memory()
        freed_at_retry.append(all(ref() is None for ref in activations))
        return real_generate(self, items, options, **kwargs)

    monkeypatch.setattr(engine_module.Engine, "_generate", generate)
    result, written = batch_in_order(tmp_path, rows, qwen, batch_size=2)
    assert not any("error" in row for row in written)
    expected = {row["id"]: row["answer"] for row in alone}
    assert {row["id"]: row["answer"] for row in written} == expected
    # Batches: [0, 1], [2, 3], [99] (the last one alone, so it never fails).
    assert generate_calls == [2, "empty_cache", 1, 1, 2, "empty_cache", 1, 1, 1]
    assert freed_at_retry and all(freed_at_retry)
    assert "5 items: 5 processed (5 answered, 0 errors)" in result.stderr


def test_batch_out_of_memory_every_time_records_each_item_and_goes_on(
        tmp_path, qwen, monkeypatch, generate_calls):
    def generate(self, items, options, **kwargs):
        generate_calls.append(len(items))
        raise out_of_memory()

    monkeypatch.setattr(engine_module.Engine, "_generate", generate)
    rows = many_rows(10)  # item-9 names a missing video
    result, written = batch_in_order(tmp_path, rows, qwen, batch_size=3, exit_code=1)
    errors = [row["error"] for row in written]
    assert errors[:9] == ["OutOfMemoryError: " + OOM_MESSAGE.splitlines()[0]] * 9
    assert errors[9].endswith("missing.mp4: no such file")
    # Each batch of 3 fails, then each of its items alone, each failure followed by a release.
    assert generate_calls == [3, "empty_cache", *[1, "empty_cache"] * 3] * 3
    assert "10 items: 10 processed (0 answered, 10 errors)" in result.stderr


@pytest.mark.parametrize("failures", [1, 2])
def test_batch_out_of_memory_in_the_vision_encoder_retries_after_the_queue(
        tmp_path, qwen, monkeypatch, generate_calls, failures):
    """An encoder OOM first answers the items queued before it (freeing their features) and
    tries once more; a second OOM is the item's error, and the run goes on either way (ending
    it would block every --resume at the same item)."""
    real_encode = QwenVLAdapter.encode
    encodes: list[int] = []

    def encode(self, item, signals=frozenset()):
        encodes.append(len(encodes))
        if 2 <= len(encodes) < 2 + failures:
            generate_calls.append("encode OOM")
            raise out_of_memory()
        return real_encode(self, item, signals)

    real_generate = engine_module.Engine._generate

    def generate(self, items, options, **kwargs):
        generate_calls.append(len(items))
        return real_generate(self, items, options, **kwargs)

    monkeypatch.setattr(QwenVLAdapter, "encode", encode)
    monkeypatch.setattr(engine_module.Engine, "_generate", generate)
    _, written = batch_in_order(tmp_path, many_rows(4), qwen, batch_size=2)
    if failures == 1:  # item 0 answered alone to make room, then item 1 encodes
        assert generate_calls == ["encode OOM", "empty_cache", 1, 2, 1]
        assert all("error" not in row for row in written)
    else:
        assert generate_calls == ["encode OOM", "empty_cache", 1, "encode OOM", "empty_cache",
                                  2]
        assert [row.get("error") for row in written] == [
            None, "OutOfMemoryError: " + OOM_MESSAGE.splitlines()[0], None, None]


# --- Ctrl-C and kill ------------------------------------------------------------------------

def start_batch(source: Path, out: Path, model: Path, log: Path, *extra: str
                ) -> subprocess.Popen:
    with log.open("wb") as stderr:  # a file, not a pipe: the child never blocks on stderr
        return subprocess.Popen(
            [str(SCRIPT), "batch", str(source), "--out", str(out), "-m", str(model), *FAST,
             *extra], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for_lines(path: Path, count: int, process: subprocess.Popen, log: Path,
                   timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if process.poll() is not None:
            pytest.fail(f"batch ended early ({process.returncode}): {log.read_text()}")
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"no {count} lines in {timeout} s")


def interrupt_then_resume(tmp_path: Path, model: Path, sent: signal.Signals, *extra: str
                          ) -> tuple[int, str, list[dict], list[dict]]:
    rows = many_rows(80)
    source = jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    log = tmp_path / "stderr.txt"
    process = start_batch(source, out, model, log, *extra)
    try:
        wait_for_lines(out, 3, process, log)
        process.send_signal(sent)
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    before = read_jsonl_strictly(out)
    assert 3 <= len(before) < len(rows), "the run was not cut part-way"
    return returncode, log.read_text(), before, rows


def resume(tmp_path: Path, model: Path, *extra: str) -> tuple[str, list[dict]]:
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["batch", str(tmp_path / "in.jsonl"), "--out", str(out),
                                 "--resume", "-m", str(model), *FAST, *extra])
    assert result.exit_code == 0, result.output
    return result.stderr, read_jsonl_strictly(out)


def test_ctrl_c_exits_130_with_complete_lines_and_resume_finishes(tmp_path, tiny_checkpoints):
    model = tiny_checkpoints("qwen2_vl")
    returncode, stderr, before, rows = interrupt_then_resume(
        tmp_path, model, signal.SIGINT, "--batch-size", "2")
    assert returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert len({row["id"] for row in before}) == len(before)

    summary, after = resume(tmp_path, model, "--batch-size", "2")
    assert after[:len(before)] == before  # resume only appends
    assert_each_id_once(after, [row["id"] for row in rows])
    assert sum("error" in row for row in after) == 8  # the missing videos, nothing else
    assert f"{len(before)} skipped" in summary


def test_kill_leaves_complete_lines_and_resume_cuts_a_torn_one(tmp_path, tiny_checkpoints):
    model = tiny_checkpoints("qwen2_vl")
    returncode, _, before, rows = interrupt_then_resume(tmp_path, model, signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    # A write cut by the kill leaves a line without its newline; the resume scan drops it.
    out = tmp_path / "out.jsonl"
    torn_id = rows[len(before)]["id"]
    with out.open("ab") as handle:
        handle.write(json.dumps({"id": torn_id, "answer": "cut"}).encode()[:-9])
    # The scan counts the complete records and truncates the torn line.
    assert existing_ids(out) == Counter(str(row["id"]) for row in before)
    with out.open("ab") as handle:
        handle.write(b'{"id": "' + torn_id.encode())

    _, after = resume(tmp_path, model)
    assert after[:len(before)] == before
    assert_each_id_once(after, [row["id"] for row in rows])
    assert next(row for row in after if row["id"] == torn_id)["answer"] != "cut"


# --- hostile ids and paths ------------------------------------------------------------------

def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_item_ids_never_become_paths(tmp_path, qwen, monkeypatch):
    work = tmp_path / "a" / "b" / "work"
    (work / "results").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    absolute = f"/tmp/vidcom2-fault-{uuid.uuid4().hex}"
    hostile = ["../../etc/passwd", absolute, "..", "../../../escape.png", "~/owned",
               "results/../../x", "a\\..\\..\\b", "nul\u0000byte", "-", "."]
    rows = [{"id": item_id, "video": VIDEOS[number % 3], "question": "What happens?"}
            for number, item_id in enumerate(hostile)]
    rows.append({"id": "not-a-video", "video": "/etc/passwd", "question": "What is this?"})
    jsonl(work / "in.jsonl", rows)
    before = tree(tmp_path)

    result = runner.invoke(app, ["batch", "in.jsonl", "--out", "results/out.jsonl", *qwen])
    assert result.exit_code == 0, result.output
    assert tree(tmp_path) == before | {"a/b/work/results/out.jsonl"}
    assert not Path(absolute).exists()
    written = read_jsonl_strictly(work / "results" / "out.jsonl")
    # ids kept verbatim (records come grouped by video)
    assert sorted(row["id"] for row in written) == sorted(row["id"] for row in rows)
    assert written[-1]["id"] == "not-a-video"
    assert not any("error" in row for row in written[:-1])
    error = written[-1]["error"]
    assert error.startswith("/etc/passwd") and "root:" not in error  # no file content echoed


def test_output_goes_exactly_where_given(tmp_path, qwen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    jsonl(tmp_path / "in.jsonl", many_rows(2))
    before = tree(tmp_path)
    given = "sub/../odd name [1].jsonl"
    result = runner.invoke(app, ["batch", "in.jsonl", "--out", given, *qwen])
    assert result.exit_code == 0, result.output
    assert tree(tmp_path) == before | {"odd name [1].jsonl"}  # no temp or side files
    assert len(read_jsonl_strictly(tmp_path / given)) == 2


# --- what loading trusts --------------------------------------------------------------------

def test_loading_uses_safetensors_and_never_trusts_remote_code(tiny_checkpoints, monkeypatch):
    calls: list[tuple[str, dict]] = []

    def recorder(name: str, original):
        def from_pretrained(*args, **kwargs):
            calls.append((name, kwargs))
            return original(*args, **kwargs)
        return from_pretrained

    for cls in (transformers.AutoConfig, transformers.AutoProcessor,
                transformers.AutoModelForImageTextToText):
        monkeypatch.setattr(cls, "from_pretrained",
                            recorder(cls.__name__, cls.from_pretrained))
    model_loader = transformers.PreTrainedModel.from_pretrained.__func__

    def model_from_pretrained(cls, *args, **kwargs):
        calls.append(("PreTrainedModel", kwargs))
        return model_loader(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained",
                        classmethod(model_from_pretrained))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called while loading a checkpoint")

    monkeypatch.setattr(torch, "load", no_unpickling)

    loaded = load_model(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"))
    assert loaded.model_type == "qwen2_vl"
    names = [name for name, _ in calls]
    for name in ("AutoConfig", "AutoProcessor", "AutoModelForImageTextToText",
                 "PreTrainedModel"):
        assert name in names
    assert all(kwargs.get("trust_remote_code") is not True for _, kwargs in calls)
    for name, kwargs in calls:
        if name in ("AutoConfig", "AutoProcessor", "AutoModelForImageTextToText"):
            assert kwargs.get("trust_remote_code") is False, name
        if name in ("AutoModelForImageTextToText", "PreTrainedModel"):
            assert kwargs.get("use_safetensors") is True, name


@pytest.fixture(scope="module")
def pickle_only_checkpoint(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny Qwen2-VL checkpoint with its weights as pytorch_model.bin and no safetensors.

    transformers 5 saves safetensors only (safe_serialization is gone), so the state dict is
    written with torch.save, which is what an old checkpoint's pytorch_model.bin holds.
    """
    source = tiny_checkpoints("qwen2_vl")
    directory = tmp_path_factory.mktemp("pickle_only") / "checkpoint"
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns("*.safetensors*"))
    model = transformers.AutoModelForImageTextToText.from_pretrained(source)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    assert not list(directory.glob("*.safetensors"))
    return directory


@pytest.mark.parametrize("command", ["ask", "batch"])
def test_pickle_only_checkpoint_is_refused(pickle_only_checkpoint, tmp_path, monkeypatch,
                                           command):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on a pickle checkpoint")

    monkeypatch.setattr(torch, "load", no_unpickling)
    out = tmp_path / "out.jsonl"
    args = ([VIDEOS[0], "What happens?"] if command == "ask"
            else [str(jsonl(tmp_path / "in.jsonl", many_rows(2))), "--out", str(out)])
    result = runner.invoke(app, [command, *args, "-m", str(pickle_only_checkpoint), *FAST])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(pickle_only_checkpoint) in lines[0]
    assert "pytorch_model.bin" in lines[0] and "safetensors" in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_script_is_installed():
    """The subprocess tests run the console script next to this interpreter."""
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)
