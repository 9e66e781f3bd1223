"""`vidcom2 watch`'s parts: the forgetting policy, the frame queue, sources, and the stream's
memory in the language model's cache on tiny checkpoints of two families (fp32)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vidcom2_cli.compression import select
from vidcom2_cli.engine import OPENING_QUESTION, Engine
from vidcom2_cli.errors import InputError
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions
from vidcom2_cli.watch.forget import HEADROOM, HeldCount, plan_forgetting
from vidcom2_cli.watch.memory import StreamMemory
from vidcom2_cli.watch.session import Schedule, chunk_frames, clock
from vidcom2_cli.watch.source import Frame, FrameQueue, parse_source

pytestmark = pytest.mark.slow
FAMILIES = ["llava_onevision", "qwen2_vl", "qwen3_vl"]
GENERATION = GenerationOptions(max_new_tokens=6)
QUESTION = "What happens in the stream?"
FRAMES_PER_CHUNK = 4


def frames(seed: int, count: int = FRAMES_PER_CHUNK, side: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def times(chunk: int, count: int = FRAMES_PER_CHUNK) -> list[float]:
    return [float(chunk * count + i) for i in range(count)]


@pytest.fixture(scope="module")
def engine_of(tiny_checkpoints):
    """family -> its tiny checkpoint's engine, loaded once per module."""
    loaded: dict[str, Engine] = {}

    def engine(family: str) -> Engine:
        if family not in loaded:
            # fp32: the incremental cache must give the one-shot prefill's greedy tokens
            loaded[family] = Engine.load(str(tiny_checkpoints(family)), LoadOptions(
                device="cpu", dtype="float32", attention="sdpa"))
        return loaded[family]

    return engine


@pytest.fixture(scope="module", params=FAMILIES)
def family_engine(request, engine_of) -> tuple[str, Engine]:
    return request.param, engine_of(request.param)



# --- the forgetting policy --------------------------------------------------------------------

def test_forgetting_leaves_a_stream_within_budget_alone():
    chunks = [HeldCount(10, 3), HeldCount(10, 3)]
    assert plan_forgetting(chunks, 5, 25, "oldest").counts == [10, 10]


def test_forgetting_oldest_drops_oldest_first_down_to_the_headroom():
    chunks = [HeldCount(10, 3) for _ in range(10)]
    plan = plan_forgetting(chunks, 5, 100, "oldest")
    assert 5 + sum(plan.counts) <= 100 * HEADROOM
    kept = [index for index, count in enumerate(plan.counts) if count]
    assert kept == list(range(10 - len(kept), 10))  # a run of the newest
    assert plan.changed_from(chunks) == 0


def test_forgetting_by_compression_keeps_older_chunks_smaller_and_the_newest_whole():
    chunks = [HeldCount(40, 5) for _ in range(6)]
    plan = plan_forgetting(chunks, 10, 200, "compress")
    assert 10 + sum(plan.counts) <= 200 * HEADROOM
    assert plan.counts[-1] == 40
    assert all(count > 0 for count in plan.counts)  # nothing had to be dropped
    assert plan.counts == sorted(plan.counts)  # the older, the fewer tokens
    assert all(count >= 5 for count in plan.counts)


def test_forgetting_by_compression_drops_the_oldest_once_all_are_at_their_floor():
    chunks = [HeldCount(6, 5, level=3) for _ in range(5)] + [HeldCount(40, 5)]
    plan = plan_forgetting(chunks, 10, 60, "compress")
    assert plan.counts[0] == 0 and plan.counts[-1] == 40
    assert 10 + sum(plan.counts) <= 60


# --- the frame queue, sources, schedule ---------------------------------------------------

def test_a_live_queue_skips_its_oldest_frames_and_counts_them():
    queue = FrameQueue(3, lossy=True)
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    for second in range(7):
        assert queue.put(Frame(float(second), image))
    assert queue.skipped == 4 and len(queue) == 3
    assert [queue.get(0).time_s for _ in range(3)] == [4.0, 5.0, 6.0]
    assert queue.latest_s == 6.0


def test_a_file_queue_waits_for_room_instead_of_skipping():
    queue = FrameQueue(2, lossy=False)
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    writer = threading.Thread(target=lambda: [queue.put(Frame(float(s), image))
                                              for s in range(6)])
    writer.start()
    got = []
    while len(got) < 6:
        frame = queue.get(timeout=5)
        assert frame is not None
        got.append(frame.time_s)
    writer.join()
    assert got == [float(s) for s in range(6)] and queue.skipped == 0
    queue.close()
    assert queue.closed and queue.get(0) is None


def test_sources_are_told_apart_without_opening_them(tmp_path):
    video = tmp_path / "growing.ts"
    video.write_bytes(b"")
    assert parse_source("-").kind == "stdin"
    assert parse_source("udp://127.0.0.1:1234").kind == "network"
    assert parse_source("rtsp://camera.local/stream", "rtsp").demuxer == "rtsp"
    assert parse_source(str(video)).kind == "file"
    assert not parse_source(str(video)).live and parse_source("http://x/a.m3u8").live
    with pytest.raises(InputError, match="no such file"):
        parse_source(str(tmp_path / "missing.ts"))
    with pytest.raises(InputError, match="is a folder"):
        parse_source(str(tmp_path))


def test_the_schedule_answers_once_per_period_of_stream_time():
    schedule = Schedule(8.0)
    due = [end for end in (4.0, 8.0, 12.0, 16.0, 28.0, 30.0, 32.0) if schedule.due(end)]
    assert due == [8.0, 16.0, 28.0, 32.0]
    assert chunk_frames(4, 1.0) == 4 and chunk_frames(0.5, 1.0) == 1
    assert chunk_frames(3, 2.0) == 6
    assert clock(75) == "1:15" and clock(3725) == "1:02:05"


# --- the stream's memory --------------------------------------------------------------------

def one_shot_tokens(engine: Engine, video: np.ndarray, ratio: float) -> list[int]:
    """The engine's usual path over one chunk's frames (prompt built by the processor with
    the question, one forward over the whole prompt)."""
    adapter = engine.adapter
    metadata = {"fps": 1.0, "frames_indices": list(range(len(video))),
                "total_num_frames": len(video), "duration": float(len(video))}
    item = adapter.to_device(adapter.preprocess(video, metadata, QUESTION))
    encoded = adapter.encode(item)
    plan = select(encoded.features, ratio, "vidcom2", grid=encoded.grid,
                  profile=adapter.compression_profile)
    result = adapter.generate([adapter.compress(item, encoded, plan)],
                              max_new_tokens=GENERATION.max_new_tokens)
    return result.token_ids[0]


def test_one_chunk_answers_as_the_engine_does_over_its_frames(family_engine):
    """A stream of one chunk is the engine's prompt for that chunk: same greedy tokens."""
    _, engine = family_engine
    memory = StreamMemory(engine, CompressionOptions(ratio=0.5), fps=1.0)
    video = frames(1)
    memory.add(video, times(0))
    assert memory.ask(QUESTION, GENERATION).token_ids == one_shot_tokens(engine, video, 0.5)


@pytest.mark.parametrize("forget", ["oldest", "compress"])
def test_answers_on_the_appended_cache_equal_a_one_shot_prefill(family_engine, forget,
                                                                encoder_calls):
    """At several moments of a stream that outgrows its budget, the answer on the cache built
    chunk by chunk (and cropped and refilled after forgetting) has the greedy tokens of a
    fresh prefill of the same held chunks in one pass; each chunk is encoded once."""
    _, engine = family_engine
    probe = StreamMemory(engine, CompressionOptions(ratio=0.5), fps=1.0)
    probe.add(frames(0), times(0))
    budget = probe.tokens_held + 3 * (probe.tokens_held - probe.head_tokens)
    memory = StreamMemory(engine, CompressionOptions(ratio=0.5), fps=1.0,
                          memory_tokens=budget, forget=forget)
    encoder_calls.clear()
    forgot = 0
    for chunk in range(8):
        report = memory.add(frames(10 + chunk), times(chunk))
        forgot += report.dropped + report.recompressed
        if chunk % 2:
            incremental = memory.ask(QUESTION, GENERATION)
            fresh = memory.ask(QUESTION, GENERATION, fresh=True)
            assert incremental.token_ids == fresh.token_ids
            assert incremental.end_s == 4.0 * (chunk + 1)
    assert forgot > 0  # the budget was reached, so the refill path ran
    assert len(encoder_calls) == 8 == memory.stats.encoder_calls


def test_memory_stays_within_its_budget_on_a_long_stream(family_engine):
    _, engine = family_engine
    for forget in ("oldest", "compress"):
        memory = StreamMemory(engine, CompressionOptions(ratio=0.25), fps=1.0,
                              memory_tokens=160, forget=forget)
        for chunk in range(24):
            memory.add(frames(chunk % 5), times(chunk))
            cache_length = memory._cache.get_seq_length()
            assert cache_length == memory.tokens_held <= 160
        assert memory.stats.chunks_seen == 24 and memory.stats.peak_tokens <= 160
        assert memory.time_range()[1] == 96.0
        assert memory.chunks[-1].index == 23


def test_a_budget_below_one_chunk_is_refused(family_engine):
    _, engine = family_engine
    memory = StreamMemory(engine, CompressionOptions(ratio=0.5), fps=1.0, memory_tokens=8)
    with pytest.raises(InputError, match="--memory-tokens 8"):
        memory.add(frames(0), times(0))


def test_a_method_working_inside_the_language_model_is_refused(engine_of):
    engine = engine_of("llava_onevision")  # where DyCoke's in-LLM stage runs
    with pytest.raises(InputError, match="--method dycoke"):
        StreamMemory(engine, CompressionOptions(ratio=0.5, method="dycoke"), fps=1.0)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_stream_positions_are_the_models_own_for_consecutive_videos(family, engine_of):
    """Qwen2-VL, Qwen3-VL (timestamps between frames): the held stream's M-RoPE positions
    (uncompressed) are what the model's ``get_rope_index`` gives a prompt holding the chunks
    as consecutive videos."""
    engine = engine_of(family)
    adapter = engine.adapter
    memory = StreamMemory(engine, CompressionOptions(ratio=1.0), fps=1.0)
    items = []
    for chunk in range(3):
        memory.add(frames(chunk), times(chunk))
        metadata = {"fps": 1.0, "frames_indices": times(chunk), "total_num_frames": 4,
                    "duration": 4.0}
        items.append(adapter.preprocess(frames(chunk), metadata, OPENING_QUESTION))
    held = memory.held(memory.chunks)
    ids = [item.inputs["input_ids"][0] for item in items]
    starts = [adapter.video_start(row.tolist()) for row in ids]
    ends = [adapter.prefix_length(row.tolist()) for row in ids]
    sequence = torch.cat([ids[0][:starts[0]]] + [row[start:end] for row, start, end
                                                 in zip(ids, starts, ends, strict=True)])
    inputs = {"input_ids": sequence[None],
              "attention_mask": torch.ones_like(sequence)[None],
              "video_grid_thw": torch.cat([item.inputs["video_grid_thw"] for item in items])}
    if "mm_token_type_ids" in items[0].inputs:
        types = [item.inputs["mm_token_type_ids"][0] for item in items]
        inputs["mm_token_type_ids"] = torch.cat(
            [types[0][:starts[0]]] + [row[start:end] for row, start, end
                                      in zip(types, starts, ends, strict=True)])[None]
    expected = adapter.full_positions(inputs)
    assert torch.equal(held.input_ids.cpu(), sequence)
    assert torch.equal(held.position_ids.cpu(), expected)


def test_time_positions_keep_counting_across_chunks(family_engine):
    """Each chunk's positions start after the last one's: the stream's order is the cache's."""
    _, engine = family_engine
    memory = StreamMemory(engine, CompressionOptions(ratio=0.5), fps=1.0)
    for chunk in range(3):
        memory.add(frames(chunk), times(chunk))
    memory.held(memory.chunks)
    firsts = [int(chunk.positions.min()) for chunk in memory.chunks]
    lasts = [int(chunk.positions.max()) for chunk in memory.chunks]
    assert all(lasts[i] < firsts[i + 1] for i in range(2))


def test_an_empty_or_early_question_is_one_line(family_engine):
    _, engine = family_engine
    memory = StreamMemory(engine, CompressionOptions(ratio=0.5), fps=1.0)
    with pytest.raises(InputError, match="nothing of the stream"):
        memory.ask(QUESTION, GENERATION)
    with pytest.raises(InputError, match="empty"):
        memory.ask("  ", GENERATION)


def test_odd_chunks_and_a_new_picture_size_keep_the_one_shot_answer(family_engine):
    """A chunk of 3 frames (padded to the family's multiple) and chunks whose pictures change
    size mid-stream: the appended cache still answers as a fresh prefill does."""
    _, engine = family_engine
    memory = StreamMemory(engine, CompressionOptions(ratio=0.5), fps=1.0)
    memory.add(frames(0, count=3), times(0, count=3))
    memory.add(frames(1, side=48), [3.0, 4.0, 5.0, 6.0])
    memory.add(frames(2, side=80), [7.0, 8.0, 9.0, 10.0])
    assert memory.time_range() == (0.0, 11.0)
    assert (memory.ask(QUESTION, GENERATION).token_ids
            == memory.ask(QUESTION, GENERATION, fresh=True).token_ids)
