"""Plans that merge, applied by every family's adapter; vision-tower signals read by hooks."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from test_adapters import FAMILIES, QWEN, clip

from vidcom2_cli.compression import KeepPlan, Merges, select
from vidcom2_cli.models import LoadOptions, load_adapter
from vidcom2_cli.models.vision_signals import chunk_signals

pytestmark = pytest.mark.slow
ALL_SIGNALS = frozenset({"received", "probe", "keys"})


# --- the plan itself ---------------------------------------------------------------------

def test_merges_replace_targets_by_weighted_sums_and_leave_the_rest():
    tokens = torch.randn(13, 5, generator=torch.Generator().manual_seed(0))  # 12 + a newline
    merges = Merges.from_groups([(2, [2, 3, 7], [0.6, 0.2, 0.2]), (9, [9, 3], [1.0, 0.5])])
    merged = merges.apply(tokens)
    assert torch.allclose(merged[2], 0.6 * tokens[2] + 0.2 * tokens[3] + 0.2 * tokens[7])
    assert torch.allclose(merged[9], tokens[9] + 0.5 * tokens[3])  # a source may feed several
    untouched = [index for index in range(13) if index not in (2, 9)]
    assert torch.equal(merged[untouched], tokens[untouched])


def test_a_plan_counts_its_merges_and_refuses_a_merge_into_a_dropped_token():
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 0] = mask[1, 2] = True
    merges = Merges.from_groups([(0, [0, 1, 4], [0.5, 0.25, 0.25]), (8, [8, 9], [0.5, 0.5])])
    plan = KeepPlan(mask=mask, method="hand", ratio=0.2, merges=merges)
    assert plan.total_merged == 3 and plan.total_merge_targets == 2
    assert plan.merged_mask().reshape(-1).nonzero().squeeze(1).tolist() == [1, 4, 9]
    with pytest.raises(ValueError, match="not kept"):
        KeepPlan(mask=mask, method="hand", ratio=0.2,
                 merges=Merges.from_groups([(3, [3], [1.0])]))


def test_a_keep_plan_applies_as_the_identity():
    tokens = torch.randn(7, 3)
    plan = KeepPlan(mask=torch.ones(1, 7, dtype=torch.bool), method="vidcom2", ratio=1.0)
    assert plan.apply(tokens) is tokens and plan.total_merged == 0


# --- adapters apply merges to every per-token tensor, at the representatives' positions ---

@pytest.fixture(scope="module", params=FAMILIES)
def family_adapter(request, tiny_checkpoints):
    # fp32, not "auto": merged tokens are compared with hand-computed sums to 1e-5, which bf16
    # (auto's choice on a CPU with AVX512-BF16 or AMX) cannot hold
    loaded, adapter = load_adapter(str(tiny_checkpoints(request.param)),
                                   LoadOptions(device="cpu", dtype="float32", attention="sdpa"))
    return request.param, loaded, adapter


def hand_merging_plan(features: torch.Tensor, grid: tuple[int, int]) -> KeepPlan:
    """Keep every third token; each kept token absorbs the next dropped one, half and half
    (and the last kept token of the video also a token of the first unit)."""
    units, tokens, _ = features.shape
    mask = torch.zeros(units * tokens, dtype=torch.bool)
    mask[::3] = True
    groups = [(index, [index, index + 1], [0.5, 0.5])
              for index in range(0, units * tokens - 1, 3)]
    last = int(mask.nonzero()[-1])
    groups.append((last, [last, 1], [0.75, 0.25]))
    return KeepPlan(mask=mask.reshape(units, tokens), method="hand", ratio=1 / 3, grid=grid,
                    merges=Merges.concat([Merges.from_groups(groups[:-1]),
                                          Merges.from_groups(groups[-1:])]))


def per_token_tensors(adapter, output) -> list[torch.Tensor]:
    tensors: list[torch.Tensor] = []
    adapter.map_output(output, lambda tokens: tensors.append(tokens) or tokens)
    return tensors


def test_merged_tokens_hold_weighted_sums_in_every_tensor_at_their_original_positions(
        family_adapter):
    family, _, adapter = family_adapter
    video, metadata = clip(0, 8)
    item = adapter.prepare(video, metadata, "What happens?")
    encoded = adapter.encode(item)
    plan = hand_merging_plan(encoded.features, encoded.grid)
    compressed = adapter.compress(item, encoded, plan)

    kept = plan.flat_mask().nonzero().squeeze(1)
    before = per_token_tensors(adapter, encoded.output)
    after = per_token_tensors(adapter, compressed.output)
    assert len(before) == len(after) >= 1  # Qwen3-VL-style families add deepstack tensors
    for full, sliced in zip(before, after, strict=True):
        expected = full.clone()
        for target, sources, weights in [(int(t), *_entries(plan.merges, int(t)))
                                         for t in torch.unique(plan.merges.targets)]:
            expected[target] = sum(w * full[s] for s, w in zip(sources, weights, strict=True))
        assert torch.allclose(sliced[:kept.numel()], expected[kept], atol=1e-5)

    # positions: a kept (merged) token keeps its own; structure and text keep theirs
    keep = torch.ones(item.length, dtype=torch.bool)
    keep[item.video_token_mask] = adapter.feature_keep_mask(plan)
    if family in QWEN:
        assert torch.equal(compressed.position_ids, item.positions[:, keep])
    else:
        assert torch.equal(compressed.position_ids[0], torch.arange(int(keep.sum())))
    assert torch.equal(compressed.input_ids, item.inputs["input_ids"][0][keep])
    assert len(adapter.generate([compressed], max_new_tokens=2).texts) == 1


def _entries(merges: Merges, target: int) -> tuple[list[int], list[float]]:
    rows = (merges.targets == target).nonzero().squeeze(1)
    return merges.sources[rows].tolist(), merges.weights[rows].tolist()


# --- vision signals --------------------------------------------------------------------

def test_signals_come_with_the_features_on_every_family_and_leave_no_hook(family_adapter):
    _, loaded, adapter = family_adapter
    video, metadata = clip(1, 8)
    item = adapter.prepare(video, metadata, "What happens?")
    plain = adapter.encode(item)
    probed = adapter.encode(item, ALL_SIGNALS)
    assert torch.equal(plain.features, probed.features)  # the tower's output is untouched
    units, tokens, _ = probed.features.shape
    signals = probed.signals
    assert signals.received.shape == signals.probe.shape == (units, tokens)
    assert signals.keys.shape[:2] == (units, tokens)
    assert bool((signals.received > 0).all()) and bool((signals.probe > 0).all())
    assert plain.signals is None
    assert not any(module._forward_pre_hooks for module in loaded.model.modules())
    again = adapter.encode(item)
    assert torch.equal(again.features, plain.features)
    assert torch.equal(select(again.features, 0.25).mask, select(plain.features, 0.25).mask)


def test_signals_left_no_hook_after_an_error(family_adapter):
    _, loaded, adapter = family_adapter
    video, metadata = clip(1, 8)
    item = adapter.prepare(video, metadata, "What happens?")
    with pytest.raises(ValueError, match="unknown vision signals"):
        adapter.encode(item, frozenset({"received", "gaze"}))
    assert not any(module._forward_pre_hooks for module in loaded.model.modules())


def test_onevision_received_attention_equals_the_eager_towers_attention(tiny_checkpoints):
    """The hook's recomputed attention against the weights SigLIP itself returns in eager
    mode, averaged over heads and queries and pooled like LLaVA-OV's features."""
    loaded, adapter = load_adapter(str(tiny_checkpoints("llava_onevision")),  # fp32: 1e-5 below
                                   LoadOptions(device="cpu", dtype="float32", attention="eager"))
    video, metadata = clip(2, 8)
    item = adapter.prepare(video, metadata, "What happens?")
    signals = adapter.encode(item, ALL_SIGNALS).signals
    pixels = item.inputs["pixel_values_videos"].flatten(0, 1)
    with torch.inference_mode():
        attentions = loaded.model.model.vision_tower(pixels, output_attentions=True).attentions
    layer = len(attentions) + loaded.model.config.vision_feature_layer
    received = attentions[layer].mean(dim=(1, 2))  # (frames, patches)
    side = round(received.shape[1] ** 0.5)
    pooled = torch.nn.functional.interpolate(received.reshape(-1, 1, side, side),
                                             size=[(side + 1) // 2] * 2, mode="bilinear")
    assert torch.allclose(signals.received, pooled.flatten(1), atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_qwen_signals_land_on_the_tokens_the_merger_made(tiny_checkpoints, family):
    """Where the tower runs merge units in window order (Qwen2.5-VL), the signals must be put
    back in raster order as the model puts its features. (GLM-4V convolves merge units before
    its merger and never reorders them.) Checked with the model's own
    ordering: the merger's input units are each replaced by their mean (a pre-hook), so the
    model's features are merger(mean of unit) in the model's order, while ``pool_signals``
    of the same means, through the merger, gives them in our order."""
    loaded, adapter = load_adapter(str(tiny_checkpoints(family)),
                                   LoadOptions(device="cpu", attention="sdpa"))
    visual = loaded.model.model.visual
    unit = int(loaded.model.config.vision_config.spatial_merge_size) ** 2
    video, metadata = clip(3, 8)
    item = adapter.prepare(video, metadata, "What happens?")
    seen: list[torch.Tensor] = []

    def unit_means(_, args):
        hidden = args[0]
        means = hidden.reshape(-1, unit, hidden.shape[-1]).mean(dim=1, keepdim=True)
        seen.append(means.squeeze(1))
        return (means.expand(-1, unit, -1).reshape(hidden.shape), *args[1:])

    handle = visual.merger.register_forward_pre_hook(unit_means)
    try:
        features = adapter.encode(item).features
    finally:
        handle.remove()
    units, tokens, _ = features.shape
    in_tower_order = seen[0].reshape(units, tokens, -1)
    ours = adapter.pool_signals(in_tower_order.repeat_interleave(unit, dim=1), item.inputs)
    with torch.inference_mode():
        through_merger = visual.merger(ours.reshape(-1, ours.shape[-1]).repeat_interleave(
            unit, dim=0))
    assert torch.allclose(through_merger.reshape(units, tokens, -1), features, atol=1e-5)


# --- the probe signal on merge-unit towers (FastVID's official Qwen2.5-VL signal) ----------

def _old_probe(query: torch.Tensor, key: torch.Tensor, scale: float, unit: int) -> torch.Tensor:
    """The formula replaced: softmax over every patch, then the mean over each merge unit."""
    weights = torch.softmax(query.mean(dim=1, keepdim=True) @ key.transpose(1, 2) * scale, -1)
    return weights.mean(dim=0)[0].reshape(-1, unit).mean(dim=1)


def _unit_probe(query: torch.Tensor, key: torch.Tensor, scale: float, unit: int
                ) -> torch.Tensor:
    """Per head, the mean query against each merge unit's mean key, softmax over the units;
    then the mean over heads: one value per unit."""
    heads, patches, _ = query.shape
    out = torch.zeros(patches // unit)
    for head in range(heads):
        mean_query = query[head].mean(dim=0)
        unit_keys = [key[head, u * unit:(u + 1) * unit].mean(dim=0)
                     for u in range(patches // unit)]
        logits = torch.stack([mean_query @ k * scale for k in unit_keys])
        out += torch.softmax(logits, dim=0) / heads
    return out


def test_the_probe_attends_to_merge_units_and_not_to_patches():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 16, 8, generator=generator) * 2.0  # sharp attention
    key = torch.randn(3, 16, 8, generator=generator) * 2.0
    probe = chunk_signals(query, key, 0.35, 0, frozenset({"probe"}), merge_unit=4)["probe"]
    per_unit = probe.reshape(4, 4)
    assert bool((per_unit == per_unit[:, :1]).all())  # every patch carries its unit's value
    expected = _unit_probe(query, key, 0.35, 4)
    torch.testing.assert_close(per_unit[:, 0], expected, rtol=1e-5, atol=1e-7)
    assert (per_unit[:, 0] - _old_probe(query, key, 0.35, 4)).abs().max() > 0.05
    plain = chunk_signals(query, key, 0.35, 0, frozenset({"probe"}))["probe"]  # LLaVA: per patch
    weights = torch.softmax(query.mean(dim=1, keepdim=True) @ key.transpose(1, 2) * 0.35, -1)
    torch.testing.assert_close(plain, weights.mean(dim=0)[0])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_probe_is_the_merge_unit_softmax_of_the_last_full_block(tiny_checkpoints, family):
    """The probe the adapter reads, against one computed here from the block's own inputs
    (recorded by a hook), per temporal unit, put in the features' order by pool_signals."""
    loaded, adapter = load_adapter(str(tiny_checkpoints(family)),
                                   LoadOptions(device="cpu", attention="sdpa"))
    layer = adapter.signal_layer()
    unit = layer.merge_unit
    assert unit == int(loaded.model.config.vision_config.spatial_merge_size) ** 2
    video, metadata = clip(4, 8)
    item = adapter.prepare(video, metadata, "What happens?")
    seen = []

    def record(module, args, kwargs):
        seen.append(((args[0] if args else kwargs["hidden_states"]).detach(), kwargs))

    handle = layer.module.register_forward_pre_hook(record, with_kwargs=True)
    try:
        probe = adapter.encode(item, frozenset({"probe"})).signals.probe
    finally:
        handle.remove()
    hidden, kwargs = seen[0]
    module = layer.module
    heads = module.num_heads
    with torch.inference_mode():
        query, key, _ = module.qkv(hidden).reshape(hidden.shape[0], 3, heads, -1).permute(
            1, 0, 2, 3).unbind(0)
        rotary = importlib.import_module(type(module).__module__).apply_rotary_pos_emb_vision
        query, key = rotary(query, key, *kwargs["position_embeddings"])
    bounds = kwargs["cu_seqlens"].tolist()
    per_unit, old = [], []
    for start, end in itertools.pairwise(bounds):
        q, k = query[start:end].transpose(0, 1).float(), key[start:end].transpose(0, 1).float()
        scale = q.shape[-1] ** -0.5
        per_unit.append(_unit_probe(q, k, scale, unit))
        old.append(_old_probe(q, k, scale, unit))
    ours = adapter.pool_signals(torch.stack(per_unit).repeat_interleave(unit, 1)[..., None],
                                item.inputs)[..., 0]
    torch.testing.assert_close(probe, ours, rtol=1e-5, atol=1e-7)
    before = adapter.pool_signals(torch.stack(old).repeat_interleave(unit, 1)[..., None],
                                  item.inputs)[..., 0]
    assert not torch.allclose(probe, before, rtol=1e-5, atol=1e-7)
