"""VisionZip (SigLIP/OneVision port, per frame): its properties, a plain loop reference, budgets
and the registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vidcom2_cli.compression import VisionSignals, fca_budgets, select
from vidcom2_cli.compression.visionzip import QWEN_SHARE, SIGLIP_SHARE


def signals_for(units: int, tokens: int, key_dim: int = 64, seed: int = 0) -> VisionSignals:
    generator = torch.Generator().manual_seed(seed)
    return VisionSignals(received=torch.rand(units, tokens, generator=generator),
                         keys=torch.randn(units, tokens, key_dim, generator=generator))


def merged_features(plan, features: torch.Tensor) -> torch.Tensor:
    units, tokens, channels = features.shape
    return plan.apply(features.reshape(units * tokens, channels)).reshape(units, tokens, channels)


# --- a plain loop reference written from the description ----------------------------------

def reference_visionzip(features: torch.Tensor, signals: VisionSignals, ratio: float,
                        share: float, budgets: list[int] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, merged features): one frame at a time, one token at a time."""
    units, tokens, _ = features.shape
    mask = torch.zeros(units, tokens, dtype=torch.bool)
    merged = features.float().clone()
    for t in range(units):
        total = budgets[t] if budgets is not None else max(1, round(ratio * tokens))
        dominant = math.floor(total * share)
        contextual = total - dominant
        by_attention = sorted(range(tokens), key=lambda j: (-float(signals.received[t, j]), j))
        for j in by_attention[:dominant]:
            mask[t, j] = True
        rest = [j for j in range(tokens) if not mask[t, j]]
        if contextual == 0:
            continue
        step = max(1, len(rest) // contextual)
        targets = [rest[i] for i in range(0, len(rest), step)][:contextual]
        assigned: dict[int, list[int]] = {target: [] for target in targets}
        for j in rest:
            if j in assigned:
                continue
            key = signals.keys[t, j] / signals.keys[t, j].norm()
            best, best_similarity = None, -math.inf
            for target in targets:
                other = signals.keys[t, target] / signals.keys[t, target].norm()
                similarity = float(torch.dot(key, other))
                if similarity > best_similarity:
                    best, best_similarity = target, similarity
            assigned[best].append(j)
        for target, members in assigned.items():
            mask[t, target] = True
            if members:
                merged[t, target] = (features[t, target].float()
                                     + features[t, members].float().mean(dim=0))
    return mask, merged


def assert_matches_reference(plan, features, expected_mask, expected_merged):
    assert torch.equal(plan.mask, expected_mask)
    ours = merged_features(plan, features.float())
    torch.testing.assert_close(ours[plan.mask], expected_merged[plan.mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("shape", "profile", "share"), [
    ((32, 196, 64), "onevision", SIGLIP_SHARE),
    ((32, 196, 896), "llava_video", SIGLIP_SHARE),
    ((16, 180, 512), "qwen", QWEN_SHARE),
])
@pytest.mark.parametrize("ratio", [0.25, 0.15])
def test_matches_loop_reference_on_realistic_shapes(shape, profile, share, ratio):
    features = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    signals = signals_for(shape[0], shape[1], seed=2)
    plan = select(features, ratio, "visionzip", signals=signals, profile=profile)
    assert plan.merges is not None
    assert_matches_reference(plan, features, *reference_visionzip(features, signals, ratio, share))


def test_fca_variant_matches_loop_reference_with_fca_budgets():
    features = torch.randn(16, 180, 256, generator=torch.Generator().manual_seed(4))
    features[5] += 3.0 * torch.randn(256)
    signals = signals_for(16, 180, seed=5)
    budgets = fca_budgets(features, 0.25).tolist()
    assert len(set(budgets)) > 1
    plan = select(features, 0.25, "visionzip+fca", signals=signals, profile="qwen")
    assert plan.counts == budgets
    expected = reference_visionzip(features, signals, 0.25, QWEN_SHARE, budgets)
    assert_matches_reference(plan, features, *expected)


# --- properties -----------------------------------------------------------------------------

def test_dominant_tokens_are_the_most_attended():
    signals = signals_for(4, 196, seed=3)
    features = torch.randn(4, 196, 32)
    plan = select(features, 0.25, "visionzip", signals=signals, profile="onevision")
    dominant = math.floor(49 * SIGLIP_SHARE)
    top = torch.topk(signals.received, dominant, dim=1).indices
    assert bool(plan.mask.gather(1, top).all())
    only_dominant = select(features, 0.25, "visionzip", signals=signals, profile="onevision",
                           options={"dominant_share": 1.0})
    expected = torch.zeros(4, 196, dtype=torch.bool).scatter_(
        1, torch.topk(signals.received, 49, dim=1).indices, True)
    assert torch.equal(only_dominant.mask, expected)
    assert only_dominant.merges is None


def test_contextual_token_is_target_plus_mean_of_key_similar_tokens():
    # One frame of 6 tokens, R = 0.5: S = 3, dominant_share 0.5 -> 1 dominant + 2 contextual.
    # Token 5 is the most attended; the rest [0..4] has stride targets 0 and 2 (step 5 // 2).
    received = torch.tensor([[0.1, 0.2, 0.1, 0.3, 0.2, 0.9]])
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    keys = torch.stack([e1, e1 + 0.3 * e2, e2, 2 * e1 - 0.1 * e2, e2 + 0.2 * e1, e1])[None]
    features = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(0))
    plan = select(features, 0.5, "visionzip", profile="onevision",
                  signals=VisionSignals(received=received, keys=keys),
                  options={"dominant_share": 0.5})
    assert plan.kept[0].tolist() == [0, 2, 5]
    merged = merged_features(plan, features)[0]
    x = features[0]
    torch.testing.assert_close(merged[0], x[0] + (x[1] + x[3]) / 2)
    torch.testing.assert_close(merged[2], x[2] + x[4])
    torch.testing.assert_close(merged[5], x[5])


def test_target_with_nothing_assigned_stays_as_it_is():
    # Keys make token 2 the best match of every non-target: target 0 gets nothing.
    received = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [0.0, 1.0], [0.0, 1.0],
                          [1.0, 1.0]]])
    features = torch.randn(1, 6, 8)
    plan = select(features, 0.5, "visionzip", profile="onevision",
                  signals=VisionSignals(received=received, keys=keys),
                  options={"dominant_share": 0.5})
    merged = merged_features(plan, features)[0]
    torch.testing.assert_close(merged[0], features[0, 0])
    torch.testing.assert_close(merged[2], features[0, 2] + features[0, [1, 3, 4]].mean(dim=0))


def test_qwen_profile_splits_the_budget_65_to_5():
    features = torch.randn(2, 180, 16)
    signals = signals_for(2, 180)
    qwen = select(features, 0.25, "visionzip", signals=signals, profile="qwen")
    onevision = select(features, 0.25, "visionzip", signals=signals, profile="onevision")
    # S = 45: qwen 41 dominant + 4 contextual, onevision 37 + 8.
    assert qwen.total_merge_targets <= 2 * 4 < onevision.total_merge_targets
    assert qwen.counts == onevision.counts == [45, 45]


@pytest.mark.parametrize("ratio", [0.25, 0.15])
@pytest.mark.parametrize(("shape", "profile"), [((32, 196, 64), "onevision"),
                                                ((16, 180, 64), "qwen")])
def test_kept_tokens_are_within_five_points_of_the_ratio(ratio, shape, profile):
    signals = signals_for(shape[0], shape[1])
    plan = select(torch.randn(*shape), ratio, "visionzip", signals=signals, profile=profile)
    assert abs(plan.kept_ratio - ratio) <= 0.05


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 8), st.integers(1, 40), st.integers(1, 16)),
       ratio=st.floats(0.01, 0.99), seed=st.integers(0, 2**16),
       profile=st.sampled_from(["onevision", "llava_video", "qwen"]))
def test_plan_invariants(shape, ratio, seed, profile):
    """round(R*N) (at least 1) tokens per unit; each token folds into at most one target, and
    a target holds itself (weight 1) plus its assigned tokens' mean (weights summing to 1)."""
    units, tokens, _ = shape
    features = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    plan = select(features, ratio, "visionzip", signals=signals_for(units, tokens, seed=seed),
                  profile=profile)
    assert plan.counts == [max(1, round(ratio * tokens))] * units
    if plan.merges is not None:
        merges = plan.merges
        assert merges.sources.unique().numel() == merges.sources.numel()
        own = merges.targets == merges.sources
        assert bool((merges.weights[own] == 1).all())
        sums = torch.zeros(units * tokens).index_add_(0, merges.targets, merges.weights)
        assert bool(((sums[merges.targets] - 2).abs() < 1e-5).all())


# --- registry ---------------------------------------------------------------------------------

def test_ratio_one_keeps_everything_without_merges():
    plan = select(torch.randn(3, 20, 8), 1.0, "visionzip", signals=signals_for(3, 20))
    assert bool(plan.mask.all())
    assert plan.merges is None


def test_option_override_changes_the_selection():
    features, signals = torch.randn(4, 196, 32), signals_for(4, 196)
    default = select(features, 0.25, "visionzip", signals=signals, profile="onevision")
    changed = select(features, 0.25, "visionzip", signals=signals, profile="onevision",
                     options={"dominant_share": 0.5})
    assert changed.total_merge_targets > default.total_merge_targets


def test_unknown_option_and_bad_share_are_value_errors():
    features, signals = torch.randn(2, 20, 8), signals_for(2, 20)
    with pytest.raises(ValueError, match="no option 'tau'"):
        select(features, 0.25, "visionzip", signals=signals, options={"tau": 0.5})
    with pytest.raises(ValueError, match="dominant_share"):
        select(features, 0.25, "visionzip", signals=signals, options={"dominant_share": 2.0})


def test_missing_keys_signal_is_a_value_error():
    with pytest.raises(ValueError, match="'keys'"):
        select(torch.randn(2, 20, 8), 0.25, "visionzip",
               signals=VisionSignals(received=torch.rand(2, 20)))
