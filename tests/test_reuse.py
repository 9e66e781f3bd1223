"""Encode once, ask many: prefix reuse in the engine, `ask` with several questions, `chat`,
batch reuse, and the feature cache, on tiny offline checkpoints of every family."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from jsonl_files import jsonl, records
from typer.testing import CliRunner

from vidcom2_cli import encoding
from vidcom2_cli.batch.input import parse_lines
from vidcom2_cli.batch.local import BatchOptions, run_batch
from vidcom2_cli.batch.output import ResultWriter
from vidcom2_cli.cli import app
from vidcom2_cli.engine import Engine
from vidcom2_cli.feature_cache import SUFFIX, FeatureCache
from vidcom2_cli.models import LoadOptions
from vidcom2_cli.options import CompressionOptions, GenerationOptions, SamplingOptions
from vidcom2_cli.work import Request

pytestmark = pytest.mark.slow
FAMILIES = ["llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5",
            "qwen3_5_moe", "llava_next_video", "internvl", "glm46v"]
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
COLOR, SCENE, COUNTING = (str(SAMPLES / name) for name in
                          ("color_change.mp4", "scene_cut.mp4", "counting.mp4"))
QUESTIONS = ["What happens?", "Describe the colours of everything you see in this clip.",
             "Is there a square? Answer yes or no."]
SAMPLING = SamplingOptions(frames=6)
COMPRESSION = CompressionOptions(ratio=0.25)
GENERATION = GenerationOptions(max_new_tokens=6)
FAST = ["--frames", "6", "--max-new-tokens", "6", "--device", "cpu"]
SCRIPT = Path(sys.executable).with_name("vidcom2")
runner = CliRunner()


@pytest.fixture(scope="module", params=FAMILIES)
def family_engine(request, tiny_checkpoints) -> tuple[str, Engine]:
    # fp32, not "auto": reused prefixes must give the full prompt's logits to 1e-4 and the same
    # answers, which bf16 (auto's choice on a CPU with AVX512-BF16 or AMX) rounds apart
    return request.param, Engine.load(str(tiny_checkpoints(request.param)),
                                      LoadOptions(device="cpu", dtype="float32",
                                                  attention="sdpa"))



def comparable(answer) -> tuple:
    tokens = answer.tokens
    return (answer.answer, tokens.prompt_full, tokens.prompt_kept, tokens.visual_kept,
            tokens.generated, tuple(tokens.per_frame_kept))


# --- the engine ------------------------------------------------------------------------------

def test_question_suffix_is_what_the_processor_gives(family_engine):
    """The tokens after the prefix, built from the template and tokenizer alone, equal the
    processor's for the same question; the prefix is the same for every question."""
    _, engine = family_engine
    adapter = engine.adapter
    prefixes = set()
    for question in QUESTIONS:
        prepared = engine.prepare(Request(SCENE, question), SAMPLING)
        ids = prepared.item.inputs["input_ids"][0].tolist()
        split = adapter.prefix_length(ids)
        assert adapter.question_suffix(question).tolist() == ids[split:]
        assert not prepared.item.video_token_mask[split:].any()  # the whole video is before
        prefixes.add(tuple(ids[:split]))
        rebuilt = adapter.with_question(prepared.item.without_pixels(), question)
        assert torch.equal(rebuilt.inputs["input_ids"], prepared.item.inputs["input_ids"])
        assert torch.equal(rebuilt.positions, prepared.item.positions)
    assert len(prefixes) == 1


def test_many_questions_give_the_answers_of_single_asks(family_engine, encoder_calls):
    _, engine = family_engine
    alone = [engine.ask(Request(SCENE, question), SAMPLING, COMPRESSION, GENERATION)
             for question in QUESTIONS]
    encoder_calls.clear()
    many = list(engine.ask_many(SCENE, QUESTIONS, SAMPLING, COMPRESSION, GENERATION))
    assert len(encoder_calls) == 1
    assert [comparable(answer) for answer in many] == [comparable(answer) for answer in alone]
    assert [answer.request.question for answer in many] == QUESTIONS
    reused = [answer.tokens.prefix_reused for answer in many]
    assert reused[0] == 0 and reused[1] == reused[2] > 0
    # the shared stages are reported once; later answers prefill only their own tokens
    assert many[0].timing_ms["vision"] > 0 and many[1].timing_ms["vision"] == 0
    assert many[1].timing_ms["video_decode"] == 0 and many[1].timing_ms["prefix_prefill"] == 0
    assert many[0].timing_ms["prefix_prefill"] > 0


def test_several_questions_and_videos_in_one_generate_call(family_engine):
    """Rows of two videos' prefixes, three questions, middle-padded into one call."""
    _, engine = family_engine
    contexts = [engine.video_context(engine.prepare(Request(video, "?"), SAMPLING), COMPRESSION)
                for video in (SCENE, COLOR)]
    opened = engine.open_contexts(contexts)
    asked = [(1, Request(COLOR, QUESTIONS[0])), (0, Request(SCENE, QUESTIONS[1])),
             (0, Request(SCENE, QUESTIONS[2]))]
    together = engine.ask_open(opened, asked, GENERATION)
    for (_, request), answer in zip(asked, together, strict=True):
        alone = engine.ask(request, SAMPLING, COMPRESSION, GENERATION)
        assert comparable(answer) == comparable(alone)


def test_first_token_logits_match_the_full_prompt(family_engine):
    """Prefix cache + question prefill gives the logits of one forward over the whole
    compressed prompt, within float tolerance."""
    _, engine = family_engine
    adapter = engine.adapter
    context = engine.video_context(engine.prepare(Request(SCENE, "?"), SAMPLING), COMPRESSION)
    opened = engine.open_contexts([context])
    prefix = opened.prefix
    item = adapter.with_question(context.encoded.host_item, QUESTIONS[1])
    compressed = adapter.compress(item, context.encoded.encoded, context.plan)
    full = adapter.forward_logits([compressed])[0, -1]
    batch = adapter.collate([compressed], prefix.lengths, prefix.width)
    import copy

    with torch.inference_mode():
        batch[adapter._cache_argument] = copy.deepcopy(prefix.cache)
        batch["input_ids"] = batch["input_ids"][:, prefix.width:]
        batch["position_ids"] = batch["position_ids"][..., prefix.width:]
        if "mm_token_type_ids" in batch:
            batch["mm_token_type_ids"] = batch["mm_token_type_ids"][:, prefix.width:]
        reused = adapter.model(**batch, use_cache=True).logits[0, -1]
    torch.testing.assert_close(reused, full, rtol=1e-4, atol=1e-4)
    assert int(reused.argmax()) == int(full.argmax())


def middle_padded_logits(engine: Engine) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position logits of the shortest question when two questions of different lengths
    share one call on a cached prefix (the shorter one padded between prefix and question),
    and of the same question prefilled alone on a copy of the prefix."""
    adapter = engine.adapter
    context = engine.video_context(engine.prepare(Request(SCENE, "?"), SAMPLING), COMPRESSION)
    opened = engine.open_contexts([context])
    prefix = opened.prefix
    items = [adapter.compress(adapter.with_question(context.encoded.host_item, question),
                              context.encoded.encoded, context.plan)
             for question in (QUESTIONS[0], QUESTIONS[1])]
    assert items[0].length < items[1].length

    def last_logits(chosen: list) -> torch.Tensor:
        import copy

        batch = adapter.collate(chosen, [prefix.lengths[0]] * len(chosen), prefix.width)
        cache = copy.deepcopy(prefix.cache)
        cache.reorder_cache(torch.zeros(len(chosen), dtype=torch.long))
        batch[adapter._cache_argument] = cache
        for key in ("input_ids", "mm_token_type_ids", "attention_mask"):
            if key in batch and key != "attention_mask":
                batch[key] = batch[key][:, prefix.width:]
        batch["position_ids"] = batch["position_ids"][..., prefix.width:]
        with torch.inference_mode():
            return adapter.model(**batch, use_cache=True).logits[0, -1]

    return last_logits(items), last_logits(items[:1])


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_padding_between_prefix_and_question_is_neutral_only_without_recurrent_state(
        tiny_checkpoints, family):
    """Why Qwen3.5 answers reused questions without inner padding: its Gated DeltaNet state
    decays at every pad token, where attention simply masks the pads out."""
    engine = Engine.load(str(tiny_checkpoints(family)), LoadOptions(device="cpu"))
    padded, alone = middle_padded_logits(engine)
    assert engine.adapter.pads_inside_are_neutral == (family == "qwen3_vl")
    difference = float((padded - alone).abs().max())
    if family == "qwen3_vl":
        assert difference < 1e-5  # float rounding (about 1e-7 here)
    else:
        assert difference > 1e-4  # thousands of times that, on only two tiny layers


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5", "qwen3_5_moe"])
def test_reused_questions_share_a_call_only_where_padding_is_neutral(tiny_checkpoints, family,
                                                                     monkeypatch):
    """Three questions of three lengths: one generate call with attention only, one per length
    with a recurrent state; the answers are the single asks' either way."""
    engine = Engine.load(str(tiny_checkpoints(family)), LoadOptions(device="cpu"))
    model = engine.adapter.model
    real = model.generate
    widths: list[int] = []

    def generate(**kwargs):
        widths.append(int(kwargs["input_ids"].shape[0]))
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    questions = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0] + " Why?", QUESTIONS[1]]
    context = engine.video_context(engine.prepare(Request(SCENE, "?"), SAMPLING), COMPRESSION)
    opened = engine.open_contexts([context])
    answers = engine.ask_open(opened, [(0, Request(SCENE, question)) for question in questions],
                              GENERATION)
    assert widths == ([4] if family == "qwen3_vl" else [1, 2, 1])
    widths.clear()
    for question, answer in zip(questions, answers, strict=True):
        alone = engine.ask(Request(SCENE, question), SAMPLING, COMPRESSION, GENERATION)
        assert comparable(answer) == comparable(alone)


# --- ask and chat -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llava_onevision", "qwen3_vl"])
def test_ask_with_several_questions_prints_json_lines(tiny_checkpoints, family, encoder_calls):
    model = str(tiny_checkpoints(family))
    singles = []
    for question in QUESTIONS:
        result = runner.invoke(app, ["ask", SCENE, question, "-m", model, *FAST, "--json"])
        assert result.exit_code == 0, result.output
        singles.append(json.loads(result.stdout))
    encoder_calls.clear()
    result = runner.invoke(app, ["ask", SCENE, *QUESTIONS, "-m", model, *FAST, "--json"])
    assert result.exit_code == 0, result.output
    assert len(encoder_calls) == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["question"] for line in lines] == QUESTIONS
    for line, single in zip(lines, singles, strict=True):
        assert set(single) <= set(line)
        assert line["answer"] == single["answer"]
        for key in ("prompt_full", "prompt_kept", "visual_kept", "generated"):
            assert line["tokens"][key] == single["tokens"][key]
    assert lines[0]["tokens"]["prefix_reused"] == 0 < lines[1]["tokens"]["prefix_reused"]


def test_ask_with_several_questions_renders_the_summary_once(tiny_checkpoints):
    result = runner.invoke(app, ["ask", SCENE, *QUESTIONS[:2], "-m",
                                 str(tiny_checkpoints("qwen2_vl")), *FAST])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("Retained tokens") == 1
    assert "Q1: What happens?" in result.stdout and "Q2: Describe" in result.stdout
    assert "reused from the cached prefix" in result.stdout


def test_each_footer_counts_only_its_own_prefill(tiny_checkpoints, monkeypatch):
    """The prefix prefilled once is the shared work's, not Q1's too: every footer counts the
    question's own prompt tokens and names the prefix's."""
    from rich.console import Console

    from vidcom2_cli.cli import console

    monkeypatch.setattr(console, "stdout", Console(width=200))  # one footer, one line
    args = ["ask", SCENE, *QUESTIONS, "-m", str(tiny_checkpoints("qwen2_vl")), *FAST]
    lines = [json.loads(line) for line in runner.invoke(app, [*args, "--json"]).stdout.splitlines()]
    human = runner.invoke(app, args)
    assert human.exit_code == 0, human.output
    footers = [line for line in human.stdout.splitlines() if line.startswith("prefill ")]
    assert len(footers) == len(QUESTIONS)
    prefix = lines[1]["tokens"]["prefix_reused"]
    assert prefix > 0 and all(line["tokens"]["prefix_tokens"] == prefix for line in lines)
    for footer, line in zip(footers, lines, strict=True):
        own = line["tokens"]["prompt_kept"] - prefix
        assert f"({own} prompt tokens; {prefix} " in footer
    assert "in the shared prefix" in footers[0]
    assert all("reused from the cached prefix" in footer for footer in footers[1:])
    from vidcom2_cli.report import question_footer

    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"))
    first = next(iter(engine.ask_many(SCENE, QUESTIONS, SAMPLING, COMPRESSION, GENERATION)))
    shown = question_footer(first).split(" ms")[0].removeprefix("prefill ").replace(",", "")
    own = first.timing_ms["prefill"] - first.timing_ms["prefix_prefill"]
    assert first.timing_ms["prefix_prefill"] > 0 and float(shown) == pytest.approx(own, abs=0.06)


def test_chat_from_stdin_answers_like_ask(tiny_checkpoints, encoder_calls):
    model = str(tiny_checkpoints("qwen2_5_vl"))
    asked = runner.invoke(app, ["ask", SCENE, *QUESTIONS, "-m", model, *FAST, "--json"])
    encoder_calls.clear()
    chat = runner.invoke(app, ["chat", SCENE, "-m", model, *FAST, "--json"],
                         input="\n".join(QUESTIONS) + "\n\n")
    assert chat.exit_code == 0, chat.output
    assert len(encoder_calls) == 1
    expected = [json.loads(line) for line in asked.stdout.splitlines()]
    got = [json.loads(line) for line in chat.stdout.splitlines()]
    assert [(row["question"], row["answer"], row["tokens"]["prompt_kept"]) for row in got] == [
        (row["question"], row["answer"], row["tokens"]["prompt_kept"]) for row in expected]


def test_chat_with_empty_stdin_exits_2_with_one_line(tiny_checkpoints):
    result = runner.invoke(app, ["chat", SCENE, "-m", str(tiny_checkpoints("qwen2_vl")),
                                 *FAST], input="\n")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "stdin" in result.stderr


# --- batch ------------------------------------------------------------------------------------

def batch_rows() -> list[dict | str]:
    """Video-MME-shaped: several questions per video, interleaved, with bad lines among them."""
    return [
        {"id": "s1", "video": SCENE, "question": QUESTIONS[0]},
        {"id": "c1", "video": COLOR, "question": QUESTIONS[0], "options": ["a", "b"],
         "answer": "A"},
        {"id": "s2", "video": SCENE, "question": QUESTIONS[1]},
        {"id": "gone", "video": "missing.mp4", "question": "Q?"},
        "{not json",
        {"id": "n1", "video": COUNTING, "question": QUESTIONS[2]},
        {"id": "c2", "video": COLOR, "question": QUESTIONS[1]},
        {"id": "s3", "video": SCENE, "question": QUESTIONS[2]},
        {"id": "gone-2", "video": "missing.mp4", "question": "Q2?"},
    ]


def run(engine: Engine, path: Path, out: Path, reuse: bool, batch_size: int = 1,
        prefetch: int | None = None, done: Counter | None = None) -> list[dict]:
    items = parse_lines(path.read_bytes(), path.parent)
    options = BatchOptions(SAMPLING, COMPRESSION, GENERATION, batch_size=batch_size,
                           prefetch=prefetch, reuse=reuse)
    with ResultWriter.open(str(out)) as writer:
        run_batch(engine, items, options, writer, done)
    return records(out.read_text())


def by_id(rows: list[dict]) -> dict:
    keep = ("answer", "error", "kept_ratio", "correct")
    return {row["id"]: ({key: row.get(key) for key in keep},
                        {key: row["tokens"][key] for key in ("prompt_full", "prompt_kept",
                                                             "visual_kept", "generated")}
                        if "tokens" in row else None)
            for row in rows}


@pytest.fixture(scope="module")
def batch_input(tmp_path_factory) -> Path:
    return jsonl(tmp_path_factory.mktemp("reuse") / "in.jsonl", batch_rows())


@pytest.mark.parametrize("family", ["llava_onevision", "qwen3_vl", "qwen3_5"])
def test_batch_reuse_gives_the_records_of_no_reuse(tiny_checkpoints, tmp_path, batch_input,
                                                   family, encoder_calls):
    engine = Engine.load(str(tiny_checkpoints(family)), LoadOptions(device="cpu"))
    plain = run(engine, batch_input, tmp_path / "plain.jsonl", reuse=False)
    encoder_calls.clear()
    reused = run(engine, batch_input, tmp_path / "reused.jsonl", reuse=True)
    assert len(encoder_calls) == 3  # scene, color, counting: once each
    assert by_id(reused) == by_id(plain)
    assert len(reused) == 9
    # grouped by video (the two missing ones too), in order of each video's first question
    assert [row["id"] for row in reused] == ["s1", "s2", "s3", "c1", "c2", "gone", "gone-2",
                                             "line-5", "n1"]
    reuse_counts = {row["id"]: row["tokens"]["prefix_reused"] for row in reused
                    if "tokens" in row}
    assert reuse_counts["s1"] == reuse_counts["c1"] == reuse_counts["n1"] == 0
    assert reuse_counts["s2"] > 0 and reuse_counts["c2"] > 0
    for batch_size, prefetch in ((2, 0), (3, 4)):
        again = run(engine, batch_input, tmp_path / f"b{batch_size}.jsonl", reuse=True,
                    batch_size=batch_size, prefetch=prefetch)
        assert by_id(again) == by_id(plain)


def test_batch_reuse_interrupted_then_resumed_gives_every_id_once(tiny_checkpoints, tmp_path,
                                                                  batch_input, monkeypatch):
    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"))
    real = engine.ask_open
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the first question of the second video
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "ask_open", interrupted)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(engine, batch_input, out, reuse=True)
    first = records(out.read_text())
    assert [row["id"] for row in first] == ["s1", "s2", "s3"]  # the first video's group
    monkeypatch.setattr(engine, "ask_open", real)
    from vidcom2_cli.batch.output import existing_ids

    final = run(engine, batch_input, out, reuse=True, done=existing_ids(out))
    assert Counter(row["id"] for row in final) == Counter(
        {key: 1 for key in ["s1", "s2", "s3", "c1", "c2", "gone", "line-5", "n1", "gone-2"]})


def test_batch_reuse_out_of_memory_retries_alone(tiny_checkpoints, tmp_path, batch_input,
                                                 monkeypatch):
    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"))
    plain = run(engine, batch_input, tmp_path / "plain.jsonl", reuse=False)
    real_prefill, real_ask = engine.open_contexts, engine.ask_open
    sizes: list[tuple[str, int]] = []

    def prefill(contexts):
        sizes.append(("prefill", len(contexts)))
        if len(contexts) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_prefill(contexts)

    def ask_open(opened, asked, generation, on_text=None):
        sizes.append(("ask", len(asked)))
        if len(asked) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_ask(opened, asked, generation, on_text)

    monkeypatch.setattr(engine, "open_contexts", prefill)
    monkeypatch.setattr(engine, "ask_open", ask_open)
    reused = run(engine, batch_input, tmp_path / "reused.jsonl", reuse=True, batch_size=2)
    assert by_id(reused) == by_id(plain)
    assert ("prefill", 2) in sizes and ("ask", 2) in sizes
    assert all(size == 1 for what, size in sizes[sizes.index(("prefill", 2)) + 1:][:1])


def test_batch_cli_no_reuse_and_reuse_agree(tiny_checkpoints, tmp_path, batch_input):
    model = ["-m", str(tiny_checkpoints("qwen2_vl")), *FAST]
    outs = {}
    for flag in ("--reuse", "--no-reuse"):
        out = tmp_path / f"{flag}.jsonl"
        result = runner.invoke(app, ["batch", str(batch_input), "--out", str(out), flag,
                                     *model])
        assert result.exit_code == 0, result.output
        outs[flag] = records(out.read_text())
    assert by_id(outs["--reuse"]) == by_id(outs["--no-reuse"])
    assert [row["id"] for row in outs["--no-reuse"]] == [
        "s1", "c1", "s2", "gone", "line-5", "n1", "c2", "s3", "gone-2"]


# --- the feature cache ------------------------------------------------------------------------

def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


def test_feature_cache_hit_skips_decoding_and_the_encoder(tiny_checkpoints, tmp_path,
                                                          encoder_calls, monkeypatch):
    folder = tmp_path / "cache"
    engine = Engine.load(str(tiny_checkpoints("qwen3_vl")), LoadOptions(device="cpu"),
                         feature_cache=FeatureCache(folder))
    first = engine.ask(Request(SCENE, QUESTIONS[0]), SAMPLING, COMPRESSION, GENERATION)
    assert first.feature_cache == "miss" and len(encoder_calls) == 1
    assert len(entries(folder)) == 1
    decodes = []
    real_load = encoding.load_video
    monkeypatch.setattr(encoding, "load_video",
                        lambda *a, **k: decodes.append(1) or real_load(*a, **k))
    for ratio, question in ((0.25, QUESTIONS[0]), (0.5, QUESTIONS[1]), (1.0, QUESTIONS[2])):
        compression = CompressionOptions(ratio=ratio)
        hit = engine.ask(Request(SCENE, question), SAMPLING, compression, GENERATION)
        fresh = Engine(engine.loaded, engine.adapter).ask(Request(SCENE, question), SAMPLING,
                                                          compression, GENERATION)
        assert hit.feature_cache == "hit" and hit.timing_ms["vision"] == 0
        assert comparable(hit) == comparable(fresh)
        assert hit.video.indices == fresh.video.indices
    assert len(encoder_calls) == 1 + 3  # only the uncached runs
    assert len(decodes) == 3  # likewise


def test_feature_cache_is_keyed_by_content_model_and_sampling(tiny_checkpoints, tmp_path,
                                                              encoder_calls):
    folder = tmp_path / "cache"
    cache = FeatureCache(folder)
    qwen2 = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"),
                        feature_cache=cache)
    qwen25 = Engine.load(str(tiny_checkpoints("qwen2_5_vl")), LoadOptions(device="cpu"),
                         feature_cache=cache)
    renamed = tmp_path / "renamed.mp4"
    shutil.copy(SCENE, renamed)
    altered = tmp_path / "altered.mp4"
    altered.write_bytes(Path(SCENE).read_bytes() + b"\0")  # same frames, other bytes
    runs = [(qwen2, SCENE, SAMPLING), (qwen2, str(renamed), SAMPLING),  # hit: same content
            (qwen25, SCENE, SAMPLING), (qwen2, SCENE, SamplingOptions(frames=4)),
            (qwen2, str(altered), SAMPLING)]
    outcomes = [engine.ask(Request(video, "What happens?"), sampling, COMPRESSION,
                           GENERATION).feature_cache for engine, video, sampling in runs]
    assert outcomes == ["miss", "hit", "miss", "miss", "miss"]
    assert len(encoder_calls) == 4 and len(entries(folder)) == 4


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_entry_is_reported_once_and_recomputed(tiny_checkpoints, tmp_path, damage):
    folder = tmp_path / "cache"
    notices: list[str] = []
    engine = Engine.load(str(tiny_checkpoints("llava_onevision")), LoadOptions(device="cpu"),
                         feature_cache=FeatureCache(folder, report=notices.append))
    request = Request(SCENE, "What happens?")
    reference = engine.ask(request, SAMPLING, COMPRESSION, GENERATION)
    (entry,) = entries(folder)
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[-100] ^= 0xFF  # inside the tensor data: only the checksum can tell
    entry.write_bytes(bytes(data))
    again = engine.ask(request, SAMPLING, COMPRESSION, GENERATION)
    assert again.feature_cache == "miss" and comparable(again) == comparable(reference)
    assert len(notices) == 1 and entry.name in notices[0]
    assert engine.ask(request, SAMPLING, COMPRESSION, GENERATION).feature_cache == "hit"
    assert len(notices) == 1


def test_two_processes_writing_one_entry_leave_one_valid_entry(tiny_checkpoints, tmp_path):
    folder = tmp_path / "cache"
    model = str(tiny_checkpoints("qwen2_vl"))
    command = [str(SCRIPT), "ask", SCENE, "What happens?", "-m", model, *FAST, "--json",
               "--feature-cache", str(folder)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    answers = {json.loads(stdout)["answer"] for stdout, _ in outputs}
    assert len(answers) == 1
    assert len(entries(folder)) == 1 and not list(folder.glob(".*.tmp"))
    hit = subprocess.run(command, capture_output=True, text=True, timeout=300)
    payload = json.loads(hit.stdout)
    assert payload["feature_cache"] == "hit" and payload["answer"] in answers
    assert payload["timing_ms"]["vision"] == 0


def test_cache_info_and_clear(tiny_checkpoints, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    model = str(tiny_checkpoints("qwen2_vl"))
    monkeypatch.setenv("VIDCOM2_FEATURE_CACHE", str(folder))  # the default folder
    assert runner.invoke(app, ["ask", SCENE, "Q?", "-m", model, *FAST, "-q"]).exit_code == 0
    assert runner.invoke(app, ["ask", COLOR, "Q?", "-m", model, *FAST, "-q"]).exit_code == 0
    info = runner.invoke(app, ["cache", "info", "--json"])
    assert info.exit_code == 0, info.output
    usage = json.loads(info.stdout)
    assert usage["entries"] == 2 and usage["bytes"] == sum(
        path.stat().st_size for path in entries(folder))
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 2 entries" in cleared.stdout
    assert entries(folder) == []
    monkeypatch.delenv("VIDCOM2_FEATURE_CACHE")
    missing = runner.invoke(app, ["cache", "info"])
    assert missing.exit_code == 2 and "--feature-cache" in missing.stderr


def test_no_cache_folder_no_files(tiny_checkpoints, tmp_path, monkeypatch):
    """Without --feature-cache nothing is written anywhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIDCOM2_FEATURE_CACHE", raising=False)
    result = runner.invoke(app, ["ask", SCENE, "Q?", "-m", str(tiny_checkpoints("qwen2_vl")),
                                 *FAST, "-q"])
    assert result.exit_code == 0
    assert list(tmp_path.iterdir()) == []


def test_bench_with_a_warm_feature_cache_reports_the_hit(tiny_checkpoints, tmp_path):
    folder = tmp_path / "cache"
    command = ["bench", SCENE, "-m", str(tiny_checkpoints("qwen2_vl")), "--frames", "4",
               "--ratios", "1.0,0.5", "--repeats", "1", "--warmup", "0",
               "--max-new-tokens", "2", "--device", "cpu", "--json",
               "--feature-cache", str(folder)]
    cold = runner.invoke(app, command)
    warm = runner.invoke(app, command)
    assert cold.exit_code == warm.exit_code == 0, warm.output
    cold_rows, warm_rows = json.loads(cold.stdout), json.loads(warm.stdout)
    assert {row["feature_cache"] for row in cold_rows} == {"miss"}
    assert {row["feature_cache"] for row in warm_rows} == {"hit"}
    assert all(row["vision_ms"] == 0 and row["video_decode_ms"] == 0 for row in warm_rows)
    assert [row["visual_kept"] for row in warm_rows] == [row["visual_kept"] for row in cold_rows]
    assert len(entries(folder)) == 1


def test_interactive_chat_streams_each_answer(tiny_checkpoints, monkeypatch, capsys):
    """The terminal loop: questions from input() until an empty line, each answer streamed
    token by token (the pieces make up the answer) and followed by a footer on stderr."""
    from vidcom2_cli import cli

    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"))
    expected = [engine.ask(Request(SCENE, question), SAMPLING, COMPRESSION, GENERATION).answer
                for question in QUESTIONS[:2]]
    opened = engine.open(SCENE, SAMPLING, COMPRESSION)
    typed = iter([QUESTIONS[0], QUESTIONS[1], ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    pieces: list[str] = []
    real_write = sys.stdout.write

    def write(text: str) -> int:
        pieces.append(text)
        return real_write(text)

    monkeypatch.setattr(sys.stdout, "write", write)
    cli.chat.chat_loop(engine, opened, GENERATION)
    streamed = "".join(pieces).split("\n")
    assert [line.strip() for line in streamed if line.strip()] == [
        answer for answer in expected if answer]
    assert len(pieces) > len(expected) + 1  # more than one piece per answer: streamed
    footers = capsys.readouterr().err
    assert footers.count("prefill") == 2 and "reused from the cached prefix" in footers


def test_a_cache_that_cannot_be_written_is_reported_and_the_answer_given(
        tiny_checkpoints, tmp_path, monkeypatch):
    from vidcom2_cli import feature_cache

    def failing_save(*args, **kwargs):
        raise RuntimeError("I/O error: No space left on device")  # as safetensors reports it

    monkeypatch.setattr(feature_cache, "save_file", failing_save)
    notices: list[str] = []
    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"),
                         feature_cache=FeatureCache(tmp_path / "cache", report=notices.append))
    answer = engine.ask(Request(SCENE, "What happens?"), SAMPLING, COMPRESSION, GENERATION)
    assert answer.feature_cache == "miss" and answer.answer is not None
    assert len(notices) == 1 and "No space left" in notices[0]
    assert entries(tmp_path / "cache") == [] and not list((tmp_path / "cache").glob(".*.tmp"))


def test_cache_clear_removes_only_its_own_entries(tiny_checkpoints, tmp_path):
    folder = tmp_path / "cache"
    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"),
                         feature_cache=FeatureCache(folder))
    engine.ask(Request(SCENE, "What happens?"), SAMPLING, COMPRESSION, GENERATION)
    weights = folder / "model-00001-of-00002.safetensors"  # a folder given by mistake
    weights.write_bytes(b"weights")
    usage = FeatureCache(folder).usage()
    assert usage.entries == 1
    assert FeatureCache(folder).clear().entries == 1
    assert weights.exists() and entries(folder) == [weights]


def test_a_missing_video_with_a_cache_gets_the_decoders_message(tiny_checkpoints, tmp_path):
    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"),
                         feature_cache=FeatureCache(tmp_path / "cache"))
    from vidcom2_cli.video import VideoError

    with pytest.raises(VideoError, match="no such file"):
        engine.ask(Request(str(tmp_path / "gone.mp4"), "Q?"), SAMPLING, COMPRESSION,
                   GENERATION)


def test_a_question_holding_a_special_token_is_refused_in_both_paths(tiny_checkpoints):
    """Read as the token, not as text, it would break the prompt (the processor's layout or
    the reused prefix): one InputError naming it, whether asked alone or with others."""
    from vidcom2_cli.errors import InputError

    engine = Engine.load(str(tiny_checkpoints("qwen2_vl")), LoadOptions(device="cpu"))
    bad = "Is <|video_pad|> a token? What colour is the car?"
    with pytest.raises(InputError, match="video_pad"):
        engine.ask(Request(SCENE, bad), SAMPLING, COMPRESSION, GENERATION)
    with pytest.raises(InputError, match="video_pad"):
        list(engine.ask_many(SCENE, [QUESTIONS[0], bad], SAMPLING, COMPRESSION, GENERATION))
    result = runner.invoke(app, ["ask", SCENE, bad, "-m", str(tiny_checkpoints("qwen2_vl")),
                                 *FAST])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
