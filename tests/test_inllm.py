"""In-LLM stages: HoliTom's inner merge at layer K, FlashVID's attention pruning at layer K and
DyCoke's decode-time KV pruning, run by
the layer-by-layer decoder loop, against a reference that runs the same stages by hand (a plain
loop over the layers, batch of one, written as the official code does it: eager attention
weights at the layer before the stage, a sequential pairwise merge, a cache that gathers its
kept entries); turning a stage off is today's stock path; R = 1.0 is the stock model."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from transformers import DynamicCache
from typer.testing import CliRunner

from vidcom2_cli.bench import run_bench
from vidcom2_cli.cli import app
from vidcom2_cli.compression import llm_stages, method_options
from vidcom2_cli.compression.dycoke import KVPruning, prune_kv
from vidcom2_cli.compression.flashvid import LLMPrune, attention_prune
from vidcom2_cli.compression.holitom import InnerMerge, inner_merge
from vidcom2_cli.compression.inllm import PrefillStage, VisualSpan, check_stages
from vidcom2_cli.engine import (
    CompressionOptions,
    Engine,
    GenerationOptions,
    InputError,
    Request,
    SamplingOptions,
)
from vidcom2_cli.evaluation.summary import summarize
from vidcom2_cli.models import LoadOptions, decoder_loop, loop_state
from vidcom2_cli.report import answer_to_json, bench_rows_to_json, render_bench, token_table
from vidcom2_cli.work import Question, QuestionGroup

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[1] / "sample_videos"
VIDEOS = [str(SAMPLES / name) for name in ("scene_cut.mp4", "counting.mp4")]
STEPS = 5
GENERATION = GenerationOptions(max_new_tokens=STEPS, min_new_tokens=STEPS)


# --- the stages on tensors, against the official algorithm written out ----------------------


def official_inner_merge(hidden: torch.Tensor, attention: torch.Tensor, share: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """HoliTom's merge as ``Qwen2Model_holitom`` writes it: top round(n(1-r)) by attention,
    each other token (in index order) averaged into its most cosine-similar top token."""
    count = hidden.shape[0]
    top = attention.topk(round(count * (1 - share))).indices
    rest = [i for i in range(count) if i not in set(top.tolist())]
    states = hidden.clone()
    kept = states[top]
    others = states[rest]
    similarity = (others @ kept.T) / (others.norm(dim=-1, keepdim=True)
                                      * kept.norm(dim=-1)[None])
    owner = similarity.argmax(dim=-1)
    for position, index in enumerate(rest):
        target = top[owner[position]]
        states[target] = (states[target] + states[index]) / 2
    order = top.sort().values
    return order, states[order]


def official_prune(hidden: torch.Tensor, attention: torch.Tensor, keep: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashVID's ``fastv_prune`` on one sequence: the top ceil(n keep) by attention, unchanged."""
    top = attention.topk(math.ceil(hidden.shape[0] * keep)).indices
    order = top.sort().values
    return order, hidden[order]


def official_stage(stage: PrefillStage, hidden: torch.Tensor, attention: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(stage, InnerMerge):
        return official_inner_merge(hidden, attention, stage.share)
    return official_prune(hidden, attention, stage.keep)


@pytest.mark.parametrize(("count", "keep"), [(3137, 0.3), (1089, 0.1), (40, 0.5), (7, 0.01)])
def test_flashvid_prune_matches_the_official_rule(count, keep):
    generator = torch.Generator().manual_seed(count)
    hidden = torch.randn(count, 16, generator=generator)
    attention = torch.rand(count, generator=generator).softmax(0)
    reduction = LLMPrune(20, keep).reduce(VisualSpan(hidden, attention))
    kept, states = official_prune(hidden, attention, keep)
    assert torch.equal(reduction.kept, kept) and torch.equal(reduction.hidden, states)
    assert reduction.kept.numel() == math.ceil(count * keep)
    assert attention_prune(torch.rand(5), 1e-3).numel() == 1  # at least one token


@pytest.mark.parametrize(("count", "width", "share"), [
    (3137, 896, 0.5),  # 32 frames x 196 at R = 0.5 and the newline, Qwen2-0.5B's width
    (1089, 3584, 0.5),  # 64 x 169 at R = 0.1, Qwen2-7B's width
    (400, 64, 0.3),
])
def test_inner_merge_matches_the_official_loop_on_realistic_shapes(count, width, share):
    generator = torch.Generator().manual_seed(count)
    hidden = torch.randn(count, width, generator=generator, dtype=torch.float64)
    attention = torch.rand(count, generator=generator, dtype=torch.float64).softmax(0)
    reduction = inner_merge(hidden, attention, share)
    kept, states = official_inner_merge(hidden, attention, share)
    assert torch.equal(reduction.kept, kept)
    assert reduction.kept.numel() == round(count * (1 - share))
    torch.testing.assert_close(reduction.hidden, states, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(count=st.integers(1, 40), share=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_inner_merge_keeps_round_n_times_one_minus_r_and_conserves_weight(count, share, seed):
    """Every merged token is a convex combination: the weights of a kept token and the tokens
    merged into it sum to 1 (a sum of constants gives that constant back)."""
    generator = torch.Generator().manual_seed(seed)
    attention = torch.rand(count, generator=generator, dtype=torch.float64)
    reduction = inner_merge(torch.ones(count, 3, dtype=torch.float64), attention, share)
    assert reduction.kept.numel() == min(count, max(1, round(count * (1 - share))))
    assert torch.equal(reduction.kept, reduction.kept.sort().values)
    torch.testing.assert_close(reduction.hidden, torch.ones_like(reduction.hidden))


def test_prune_kv_follows_the_official_refresh_rule():
    attention = torch.tensor([0.1, 0.5, 0.05, 0.3, 0.05])
    first = prune_kv(attention, None, 0.6, 0.9)  # no previous step: always pruned
    assert first.tolist() == [1, 3]  # floor(5 * 0.4) = 2, the top two, ascending
    assert prune_kv(attention * 1.01, attention, 0.6, 0.9) is None  # cosine 1: everything
    moved = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.2])
    assert prune_kv(moved, attention, 0.6, 0.9).tolist() == [0, 2]
    assert prune_kv(moved, attention, 1.0, 0.9).numel() == 0  # P = 1 attends no visual entry


def test_stage_options_turn_each_stage_off_and_are_published_per_profile():
    assert llm_stages("holitom", "onevision") == (InnerMerge(18, 0.5),)
    assert llm_stages("dycoke", "llava_video") == (KVPruning(3, 0.8, 0.9),)
    assert llm_stages("holitom", "qwen") == llm_stages("dycoke", "qwen") == ()
    # FlashVID's stage is off by default (tokens sent reach R); the official setting on request
    assert llm_stages("flashvid", "onevision") == llm_stages("flashvid", "qwen") == ()
    assert llm_stages("flashvid", "onevision", {"llm_keep": 0.3}) == (LLMPrune(20, 0.3),)
    assert llm_stages("flashvid", "qwen", {"llm_keep": 0.1, "llm_layer": 28}) == (
        LLMPrune(28, 0.1),)
    assert llm_stages("holitom", "onevision", {"inner_merge": 0}) == ()
    assert llm_stages("dycoke", "onevision", {"kv_prune": 0}) == ()
    assert llm_stages("holitom", "qwen", {"inner_merge": 0.25, "inner_layer": 9}) == (
        InnerMerge(9, 0.25),)
    for method, name in (("holitom", "inner_layer"), ("dycoke", "kv_layer")):
        with pytest.raises(ValueError, match=f"{name} must be in"):
            method_options(method, "onevision", {name: 0})
    with pytest.raises(ValueError, match="after every prefill stage"):
        check_stages((InnerMerge(5, 0.5), KVPruning(3, 0.8, 0.9)))


# --- the reference: the same stages by hand, one sequence -----------------------------------


def captured_calls(engine: Engine, item) -> list[dict]:
    """What the multimodal model hands its language model in a stock generate of the plan's
    kept tokens (the prompt call, then each decoding step), read by a hook."""
    text = engine.loaded.model.get_decoder()
    calls: list[dict] = []
    handle = text.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    try:
        engine.adapter.generate([dataclasses.replace(item, stages=())], STEPS,
                                min_new_tokens=STEPS)
    finally:
        handle.remove()
    return calls


def split_positions(text, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if positions.dim() == 3:
        return (positions[1:], positions[0]) if positions.shape[0] == 4 else (positions, None)
    return positions, positions


def eager_last_row(text, index: int, hidden, rotary, positions, cache) -> tuple:
    """Layer ``index`` run with eager attention and a causal mask (as ``output_attentions``
    makes the official code do): its output and the last query's weights, mean over heads."""
    length = hidden.shape[1]
    past = cache.get_seq_length(index)
    mask = torch.zeros(1, 1, length, past + length, dtype=hidden.dtype)
    mask[..., past:] = torch.full((length, length), torch.finfo(hidden.dtype).min).triu(1)
    weights = []
    attention = text.layers[index].self_attn
    handle = attention.register_forward_hook(lambda module, args, output: weights.append(output[1]))
    implementation = text.config._attn_implementation
    text.config._attn_implementation = "eager"
    try:
        hidden = text.layers[index](hidden, attention_mask=mask, position_embeddings=rotary,
                                    position_ids=positions, cache=cache)
    finally:
        text.config._attn_implementation = implementation
        handle.remove()
    return hidden, weights[0].mean(dim=1)[0, -1]


class GatheringCache(DynamicCache):
    """The official PrunableDynamicCache: layers >= ``start`` get their entries at ``keep``."""

    keep: list[int] | None = None
    start: int = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if self.keep is None or layer_idx < self.start:
            return keys, values
        index = torch.tensor(self.keep)
        return keys[:, :, index], values[:, :, index]


def reference_answer(engine: Engine, item, stage) -> dict:
    """Greedy decoding of one compressed item through a plain loop over the layers, with
    ``stage`` (an InnerMerge or a KVPruning) done by hand as the official code does it."""
    model = engine.loaded.model
    text = model.get_decoder()
    calls = captured_calls(engine, item)
    prompt = calls[0]
    span = (item.input_ids == engine.adapter.video_token_id).nonzero().squeeze(1)
    hidden = prompt["inputs_embeds"]
    rotary_positions, positions = split_positions(text, prompt["position_ids"])
    rotary = text.rotary_emb(hidden, rotary_positions)
    cache = GatheringCache(config=text.config)
    merge = isinstance(stage, PrefillStage)
    seen: dict = {"positions": None, "kept": None, "pruned": 0}
    attention = torch.empty(0)  # the last query's weights at the layer before the stage
    with torch.inference_mode():
        for index, layer in enumerate(text.layers):
            if merge and index == stage.layer:
                kept, states = official_stage(stage, hidden[0, span], attention[span])
                hidden = hidden.clone()
                hidden[0, span[kept]] = states
                dropped = set(span.tolist()) - set(span[kept].tolist())
                keep = torch.tensor([i for i in range(hidden.shape[1]) if i not in dropped])
                hidden = hidden[:, keep]
                rotary_positions = rotary_positions[..., keep]
                positions = None if positions is None else positions[..., keep]
                rotary = text.rotary_emb(hidden, rotary_positions)
                seen["positions"], seen["kept"] = rotary_positions, int(kept.numel())
            if merge and index == stage.layer - 1:
                hidden, attention = eager_last_row(text, index, hidden, rotary, positions, cache)
            else:
                hidden = layer(hidden, attention_mask=None, position_embeddings=rotary,
                               position_ids=positions, cache=cache)
            deepstack = prompt.get("deepstack_visual_embeds")
            if deepstack is not None and index < len(deepstack):
                hidden = text._deepstack_process(hidden, prompt["visual_pos_masks"],
                                                 deepstack[index])
        logits = model.lm_head(text.norm(hidden[:, -1]))
        first_logits = logits[0]
        tokens = [int(logits.argmax(-1))]
        previous = None
        cache.start = stage.layer
        for call in calls[1:]:
            hidden = text.get_input_embeddings()(torch.tensor([[tokens[-1]]]))
            rotary_positions, positions = split_positions(text, call["position_ids"])
            rotary = text.rotary_emb(hidden, rotary_positions)
            cache.keep = None
            for index, layer in enumerate(text.layers):
                if not merge and index == stage.layer:
                    current = attention[span]
                    chosen = stage.attend(current, previous)
                    previous = current
                    if chosen is not None:
                        total = cache.get_seq_length(index) + 1
                        cache.keep = sorted(set(range(total)) - set(span.tolist())
                                            | set(span[chosen].tolist()))
                        seen["pruned"] += 1
                if not merge and index == stage.layer - 1:
                    hidden, attention = eager_last_row(text, index, hidden, rotary, positions,
                                                       cache)
                else:
                    hidden = layer(hidden, attention_mask=None, position_embeddings=rotary,
                                   position_ids=positions, cache=cache)
            tokens.append(int(model.lm_head(text.norm(hidden[:, -1])).argmax(-1)))
    return {"tokens": tokens[:STEPS], "logits": first_logits, **seen}


def loop_positions(engine: Engine, items, layer: int) -> list[torch.Tensor]:
    """The rotary (cos) each call's layer ``layer`` gets inside the decoder loop."""
    seen: list[torch.Tensor] = []
    text = engine.loaded.model.get_decoder()
    handle = text.layers[layer].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_embeddings"][0]),
        with_kwargs=True)
    try:
        result = engine.adapter.generate(items, STEPS, min_new_tokens=STEPS)
    finally:
        handle.remove()
    return seen, result


@pytest.fixture(scope="module")
def engines(tiny_checkpoints) -> dict[str, Engine]:
    """float32 on every machine (``auto`` is bf16 on a CPU that computes it), so the loop and
    the reference round alike."""
    return {family: Engine.load(str(tiny_checkpoints(family)),
                                LoadOptions(device="cpu", dtype="float32", attention="sdpa"))
            for family in ("llava_onevision", "qwen2_5_vl", "qwen3_vl", "qwen3_5")}


def compressed(engine: Engine, method: str, ratio: float = 0.5, video: str = VIDEOS[0],
               frames: int = 4, question: str = "What happens in the video?", **options):
    compression = CompressionOptions(ratio, method, method_options=tuple(options.items()))
    engine.accept(compression)  # expects the vision signals the method reads
    encoded = engine.encode(Request(video, question), SamplingOptions(frames=frames))
    return engine._compress(encoded, compression)  # the plan and item, phase by phase


# (family, method, options): the published defaults on LLaVA-OneVision (layer 18 of 24, layer 3),
# and the stages turned on at layer 1 of the 2-layer Qwen2.5-VL (M-RoPE positions).
CASES = [
    ("llava_onevision", "holitom", {}),
    ("llava_onevision", "dycoke", {}),
    ("llava_onevision", "flashvid", {"llm_keep": 0.3}),
    ("qwen2_5_vl", "holitom", {"inner_merge": 0.5, "inner_layer": 1}),
    ("qwen2_5_vl", "flashvid", {"llm_keep": 0.3, "llm_layer": 1}),
    ("qwen2_5_vl", "dycoke", {"kv_prune": 0.8, "kv_layer": 1}),
]
# each method's option value that turns its stage off
STAGE_OFF = {"holitom": ("inner_merge", 0.0), "dycoke": ("kv_prune", 0.0),
             "flashvid": ("llm_keep", 1.0)}


@pytest.mark.parametrize(("family", "method", "options"), CASES)
def test_answers_counts_and_positions_equal_the_reference(engines, family, method, options):
    engine = engines[family]
    plan, item, _ = compressed(engine, method, **options)
    (stage,) = plan.stages
    reference = reference_answer(engine, item, stage)
    cosines, result = loop_positions(engine, [item], stage.layer)
    assert result.token_ids[0] == reference["tokens"]
    torch.testing.assert_close(engine.adapter.forward_logits([item])[0, -1],
                               reference["logits"], rtol=1e-4, atol=1e-4)
    (report,) = result.llm_tokens[0].stages
    visual = int((item.input_ids == engine.adapter.video_token_id).sum())
    if isinstance(stage, PrefillStage):
        expected = (round(visual * (1 - stage.share)) if method == "holitom"
                    else math.ceil(visual * stage.keep))
        assert report.visual == reference["kept"] == expected
        text = engine.loaded.model.get_decoder()
        expected = text.rotary_emb(cosines[0], reference["positions"])[0]
        torch.testing.assert_close(cosines[0], expected)  # original positions, recomputed
        assert cosines[0].shape[1] == item.length - visual + reference["kept"]
        assert result.llm_tokens[0].visual_kv_cached < visual
    else:
        assert report.pruned_steps == reference["pruned"] >= 1
        assert report.steps == STEPS - 1  # the first token comes from the prefill
        assert report.visual == math.floor(visual * (1 - stage.share))
        assert result.llm_tokens[0].visual_kv_attended < visual
        assert result.llm_tokens[0].visual_kv_cached == visual  # the cache is never shrunk


@pytest.mark.parametrize(("family", "method", "options"), CASES)
def test_off_is_the_stock_path_and_on_is_not(engines, family, method, options, monkeypatch):
    """With the stage off (its option 0), nothing runs layer by layer and the logits and the
    answer are the stock model's on the same plan; with it on, the merge changes the prefill
    (DyCoke leaves the prefill alone and prunes while decoding)."""
    engine = engines[family]
    switch, off_value = STAGE_OFF[method]
    plan_on, item_on, _ = compressed(engine, method, **options)
    plan_off, item_off, _ = compressed(engine, method, **{**options, switch: off_value})
    assert plan_off.stages == () and torch.equal(plan_on.mask, plan_off.mask)
    batch = engine.adapter.collate([item_off])
    with torch.inference_mode():
        stock = engine.loaded.model(**batch, use_cache=False).logits
        stock_ids = engine.loaded.model.generate(
            **batch, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
            temperature=None, top_p=None, top_k=None,
            pad_token_id=engine.adapter.pad_token_id)[0, batch["input_ids"].shape[1]:]
    runs = []
    running = decoder_loop.running
    monkeypatch.setattr(decoder_loop, "running",
                        lambda *args: runs.append(args) or running(*args))
    assert torch.equal(engine.adapter.forward_logits([item_off]), stock)
    off = engine.adapter.generate([item_off], STEPS, min_new_tokens=STEPS)
    assert off.token_ids[0] == engine.adapter.trim([stock_ids.tolist()])[0]
    assert not runs and off.llm_tokens is None
    on_logits = engine.adapter.forward_logits([item_on])
    on = engine.adapter.generate([item_on], STEPS, min_new_tokens=STEPS)
    assert len(runs) == 2 and on.llm_tokens is not None
    if method != "dycoke":  # a prefill stage
        assert on_logits.shape[1] < stock.shape[1]
        assert not torch.allclose(on_logits[0, -1], stock[0, -1])
    else:
        assert torch.equal(on_logits, stock)
        assert on.llm_tokens[0].stages[0].pruned_steps >= 1


@pytest.mark.parametrize(("method", "options"), [("holitom", {}), ("dycoke", {}),
                                                 ("flashvid", {"llm_keep": 0.3})])
def test_ratio_one_is_the_stock_model(engines, method, options):
    engine = engines["llava_onevision"]
    plan, item, _ = compressed(engine, method, ratio=1.0, **options)
    _, stock_item, _ = compressed(engine, "vidcom2", ratio=1.0)
    assert plan.stages == ()
    assert torch.equal(engine.adapter.forward_logits([item]),
                       engine.adapter.forward_logits([stock_item]))


@pytest.mark.parametrize(("family", "method", "options"), [CASES[0], CASES[2], CASES[5]])
def test_a_padded_batch_equals_the_single_runs(engines, family, method, options):
    """Two videos, frame counts and questions of different lengths: rows are re-left-padded
    after the merge, and each row's decoding stage is its own."""
    engine = engines[family]
    items = [compressed(engine, method, video=VIDEOS[0], frames=6, **options)[1],
             compressed(engine, method, video=VIDEOS[1], frames=4,
                        question="How many objects are there, and what colour is each?",
                        **options)[1]]
    assert items[0].length != items[1].length
    together = engine.adapter.generate(items, STEPS, min_new_tokens=STEPS)
    alone = [engine.adapter.generate([item], STEPS, min_new_tokens=STEPS) for item in items]
    assert together.token_ids == [result.token_ids[0] for result in alone]
    assert together.llm_tokens == [result.llm_tokens[0] for result in alone]


@pytest.mark.parametrize(("family", "method", "options"), [CASES[0], CASES[2], CASES[3]])
def test_questions_on_a_reused_prefix_equal_single_asks(engines, family, method, options):
    """The prefix runs the layers before a prefill stage once; each question runs the rest."""
    engine = engines[family]
    compression = CompressionOptions(0.5, method, method_options=tuple(options.items()))
    sampling = SamplingOptions(frames=4)
    questions = ["What happens?", "Which colours appear, and in what order?"]
    many = list(engine.ask_many(VIDEOS[0], questions, sampling, compression, GENERATION))
    single = [engine.ask(Request(VIDEOS[0], question), sampling, compression, GENERATION)
              for question in questions]
    assert [answer.answer for answer in many] == [answer.answer for answer in single]
    assert [answer.tokens.llm for answer in many] == [answer.tokens.llm for answer in single]
    assert many[1].tokens.prefix_reused > 0


def test_the_answer_json_reports_each_stage_additively(engines):
    engine = engines["llava_onevision"]
    answer = engine.ask(Request(VIDEOS[0], "What happens?"), SamplingOptions(frames=4),
                        CompressionOptions(0.5, "holitom"), GENERATION)
    tokens = answer_to_json(answer)["tokens"]
    llm = tokens["llm"]
    (stage,) = llm["stages"]
    assert stage["stage"] == "merge@18" and stage["layer"] == 18
    assert stage["visual"] == round(tokens["visual_kept"] * 0.5)
    # 18 of 24 layers cache every kept visual token, 6 only the merged half
    assert llm["visual_kv_cached"] == pytest.approx(
        (18 * tokens["visual_kept"] + 6 * stage["visual"]) / 24)
    stock = engine.ask(Request(VIDEOS[0], "What happens?"), SamplingOptions(frames=4),
                       CompressionOptions(0.5, "vidcom2"), GENERATION)
    assert answer_to_json(stock)["tokens"]["llm"] is None
    assert set(answer_to_json(stock)["tokens"]) == set(tokens)
    json.dumps(answer_to_json(answer))


@pytest.mark.parametrize(("family", "options", "needle"), [
    ("qwen3_5", {"inner_merge": 0.5, "inner_layer": 1}, "linear_attention layers"),
    ("qwen3_5", {"kv_prune": 0.8, "kv_layer": 1}, "linear_attention layers"),
    ("llava_onevision", {"inner_layer": 30}, "acts at layer 30, but the language model has 24"),
    ("qwen3_vl", {"inner_merge": 0.5, "inner_layer": 1}, "before the last deepstack layer"),
    ("qwen3_5", {"llm_keep": 0.3, "llm_layer": 1}, "linear_attention layers"),
    ("qwen2_5_vl", {"llm_keep": 0.3}, "acts at layer 20, but the language model has 2"),
])
def test_a_stage_the_model_cannot_run_is_refused_in_one_line(engines, family, options, needle):
    engine = engines[family]
    method = ("dycoke" if "kv_prune" in options else "flashvid" if "llm_keep" in options
              else "holitom")
    with pytest.raises(InputError, match=needle) as error:
        engine.accept(CompressionOptions(0.5, method, method_options=tuple(options.items())))
    assert str(error.value).startswith(f"--method {method}: ") and "\n" not in str(error.value)
    assert f"`vidcom2 methods {method}` names the options" in str(error.value)


def test_qwen3_vl_prunes_kv_while_decoding(engines):
    """Deepstack features go to the prompt's visual tokens; a decode stage does not touch
    them, so Qwen3-VL runs it from any layer."""
    engine = engines["qwen3_vl"]
    plan, item, _ = compressed(engine, "dycoke", kv_prune=0.8, kv_layer=1)
    reference = reference_answer(engine, item, plan.stages[0])
    result = engine.adapter.generate([item], STEPS, min_new_tokens=STEPS)
    assert result.token_ids[0] == reference["tokens"]
    assert result.llm_tokens[0].stages[0].pruned_steps == reference["pruned"]


def test_the_command_line_refuses_an_unsupported_stage_in_one_line(tiny_checkpoints):
    result = CliRunner().invoke(app, [
        "ask", str(SAMPLES / "color_change.mp4"), "Q?", "--model",
        str(tiny_checkpoints("qwen3_5")), "--frames", "4", "--max-new-tokens", "2",
        "--device", "cpu", "--method", "holitom", "--method-option", "inner_merge=0.5"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "linear_attention" in lines[0], result.stderr


def test_bench_rows_report_each_stage_and_the_decoding_kv(engines):
    engine = engines["llava_onevision"]
    engine.expect_methods(["holitom", "dycoke"])
    prepared = engine.prepare(Request(VIDEOS[0], "What happens?"), SamplingOptions(frames=4))
    rows = run_bench(engine, prepared, [1.0, 0.5], ["vidcom2", "holitom", "dycoke"],
                     GENERATION, repeats=1, warmup=0)
    by = {(row.method, row.ratio): row for row in rows}
    for row in rows:
        if row.method == "vidcom2" or row.ratio == 1.0:
            assert row.llm_stages == []
            assert row.visual_kv_cached == row.visual_kv_attended == row.visual_kept
    merge = by[("holitom", 0.5)]
    (stage,) = merge.llm_stages
    assert (stage["stage"], stage["layer"]) == ("merge@18", 18)
    assert stage["visual"] == round(merge.visual_kept * 0.5)
    assert merge.visual_kv_cached == pytest.approx(
        (18 * merge.visual_kept + 6 * stage["visual"]) / 24)
    prune = by[("dycoke", 0.5)]
    (stage,) = prune.llm_stages
    assert stage["stage"] == "kv-prune@3" and stage["steps"] == STEPS - 1
    assert prune.visual_kv_cached == prune.visual_kept > prune.visual_kv_attended
    console = Console(width=80, record=True)
    console.print(render_bench(rows, "bench", 80))
    text = console.export_text()
    assert f"merge@18: {merge.llm_stages[0]['visual']:,.0f}" in text
    assert f"kv-prune@3: {stage['visual']:,.0f} ({stage['pruned_steps']}/{STEPS - 1})" in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80 and "…" not in text
    json.dumps(bench_rows_to_json(rows))


def test_the_token_table_shows_what_the_language_model_kept(engines):
    engine = engines["llava_onevision"]
    answer = engine.ask(Request(VIDEOS[0], "What happens?"), SamplingOptions(frames=4),
                        CompressionOptions(0.5, "dycoke"), GENERATION)
    console = Console(width=80, record=True)
    console.print(token_table(answer))
    text = console.export_text()
    assert "visual KV, kv-prune@3" in text and "visual KV per layer" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_eval_summary_reports_the_decoding_kv():
    def record(method, kept, llm):
        return {"setting": method, "method": method, "ratio": 0.5, "groups": {},
                "answer": "x", "correct": True, "counted": True,
                "tokens": {"visual_kept": kept, "llm": llm},
                "timing_ms": {"prefill": 1.0, "total": 1.0}}

    def pruned(visual):
        return {"stage": "kv-prune@3", "layer": 3, "visual": visual, "steps": 4,
                "pruned_steps": 1}

    records = [record("vidcom2", 100, None), record("dycoke", 100,
                                                    {"visual_kv_attended": 40.0,
                                                     "stages": [pruned(20.0)]}),
               record("dycoke", 80, {"visual_kv_attended": 30.0, "stages": [pruned(16.0)]})]
    rows = {row["method"]: row for row in summarize(records, "videomme",
                                                     ["vidcom2", "dycoke"])["rows"]
            if row["subset"] == "all"}
    assert rows["vidcom2"]["visual_kv_attended"] == 100
    assert rows["dycoke"]["visual_kv_attended"] == 35 and rows["dycoke"]["visual_tokens"] == 90
    assert rows["vidcom2"]["llm_stages"] == {} and rows["dycoke"]["llm_stages"] == {
        "kv-prune@3": 18.0}


def test_whole_work_batches_never_mix_stage_settings(engines):
    """``answer_groups`` asks each video under three settings, four parts per batch: the
    parts are batched only with parts of the same in-LLM stages, and every answer equals the
    one-part-per-batch run's."""
    engine = engines["llava_onevision"]
    settings_ = [CompressionOptions(0.5, method) for method in ("vidcom2", "holitom", "dycoke")]
    for setting in settings_:
        engine.accept(setting)
    videos = [engine.encode(Request(video, "What happens?"), SamplingOptions(frames=4))
              for video in VIDEOS]
    groups = [QuestionGroup(video, tuple(Question(Request(video.request.video, question),
                                                  setting)
                                         for setting in settings_
                                         for question in ("What happens?", "Any colours?")))
              for video in videos]
    batched = engine.answer_groups(groups, GENERATION, batch_size=4)
    alone = engine.answer_groups(groups, GENERATION, batch_size=1)
    for together, single in zip(batched, alone, strict=True):
        assert all(not isinstance(answer, str) for answer in together), together
        assert [a.answer for a in together] == [a.answer for a in single]
        assert [a.tokens.llm for a in together] == [a.tokens.llm for a in single]
        assert [a.tokens.llm is None for a in together] == [True, True, False, False, False,
                                                            False]


def test_a_row_that_stops_early_counts_only_its_own_decoding_steps():
    """Steps after a row's end (it rides along the batch) are not its decoding KV."""
    call = loop_state.LoopCall((KVPruning(1, 0.5, 0.9),), torch.ones(2, 4, dtype=torch.bool))
    sequence = loop_state.LayerSequence(None, torch.arange(4).expand(2, -1),
                                        torch.ones(2, 4, dtype=torch.bool), None, None)
    call.groups = [(0, sequence)]
    for attended, kept in ((3.0, 2), (4.0, None), (1.0, 2)):
        for counts in call.counts:
            counts.attended.append(attended)
            counts.kept.append(kept)
    early, full = call.report(layers=2, generated=[2, 5])
    assert (early.stages[0].steps, early.stages[0].pruned_steps) == (2, 1)
    assert early.visual_kv_attended == 3.5 and early.stages[0].visual == 2
    assert (full.stages[0].steps, full.stages[0].pruned_steps) == (3, 2)
    assert full.visual_kv_attended == pytest.approx(8 / 3) and full.visual_kv_cached == 4


def test_one_prefill_of_mixed_stage_settings_keeps_each_in_its_own_part(engines):
    """Prefixes whose plans run different in-LLM stages (a server's or a batch's neighbours)
    are prefilled as parts of one prefix cache; each question runs with its own part, and
    the answers equal those on a prefix of its setting alone."""
    engine = engines["llava_onevision"]
    settings_ = [CompressionOptions(0.5, method) for method in ("holitom", "vidcom2", "dycoke",
                                                                "holitom")]
    for setting in settings_:
        engine.accept(setting)
    video = engine.prepare(Request(VIDEOS[0], "What happens?"), SamplingOptions(frames=4))
    contexts = [engine.video_context(video, setting) for setting in settings_]
    opened = engine.open_contexts(contexts)
    assert [rows for rows, _ in opened.prefix.parts] == [[0, 3], [1], [2]]
    asked = [(row, Request(VIDEOS[0], "What colours appear?")) for row in (2, 0, 1, 3)]
    together = engine.ask_open(opened, asked, GENERATION)
    alone = [engine.ask_open(engine.open_contexts([contexts[row]]), [(0, request)],
                             GENERATION)[0] for row, request in asked]
    assert [a.answer for a in together] == [a.answer for a in alone]
    assert [a.tokens.llm for a in together] == [a.tokens.llm for a in alone]
