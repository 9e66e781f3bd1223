"""DyCoke's TTM with budgets that reach R: structure, criterion, budgets, loop reference."""

from __future__ import annotations

import pytest
import torch

from vidcom2_cli.compression import fca_budgets, select


def drifting_video(units: int, tokens: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Each frame the previous one plus a change of varying size per position."""
    generator = torch.Generator().manual_seed(seed)
    frames = [torch.randn(tokens, channels, generator=generator)]
    for _ in range(units - 1):
        change = torch.rand(tokens, 1, generator=generator) * 2.0
        frames.append(frames[-1] + change * torch.randn(tokens, channels, generator=generator))
    return torch.stack(frames)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / (a.norm().clamp(min=1e-8) * b.norm().clamp(min=1e-8)))


def reference_dycoke(features: torch.Tensor, ratio: float) -> list[list[int]]:
    """Windows of 4 frames: i whole, i+1 and i+2 against i, i+3 against i+2 (originals);
    pivots whole while max(T, round(R T N)) allows beside one token per pruned frame, else the
    pruned frames keep one token each and the pivots share the rest against their next frame."""
    units, tokens, _ = features.shape
    x = features.float()
    budget = max(units, round(ratio * units * tokens))
    pivots = [t for t in range(units) if t % 4 == 0]
    pruned = [t for t in range(units) if t % 4 != 0]
    counts = [1] * units
    if pruned and len(pivots) * tokens + len(pruned) <= budget:
        rest = budget - len(pivots) * tokens
        for t in pivots:
            counts[t] = tokens
        for i, t in enumerate(pruned):
            counts[t] = min(tokens, rest // len(pruned) + (1 if i < rest % len(pruned) else 0))
    else:
        rest = budget - len(pruned)
        for i, t in enumerate(pivots):
            counts[t] = min(tokens, rest // len(pivots) + (1 if i < rest % len(pivots) else 0))
    kept = []
    for t in range(units):
        if t % 4 == 0:
            partner = t + 1 if t + 1 < units else t - 1
        else:
            partner = t - 2 if t % 4 == 2 else t - 1
        sims = [_cos(x[t, n], x[partner, n]) for n in range(tokens)]
        order = sorted(range(tokens), key=lambda n: (sims[n], n))
        kept.append(sorted(order[:counts[t]]))
    return kept


@pytest.mark.parametrize(("shape", "ratio"), [
    ((32, 196, 896), 0.25), ((32, 196, 64), 0.15), ((16, 180, 512), 0.5), ((7, 169, 128), 0.3),
])
def test_matches_loop_reference(shape, ratio):
    features = drifting_video(*shape)
    plan = select(features, ratio, "dycoke")
    assert [k.tolist() for k in plan.kept] == reference_dycoke(features, ratio)
    assert plan.merges is None


def test_pruned_positions_are_the_least_similar_to_their_reference_frame():
    features = drifting_video(8, 100, 32)
    plan = select(features, 0.5, "dycoke")
    references = {1: 0, 2: 0, 3: 2, 5: 4, 6: 4, 7: 6}
    for frame, reference in references.items():
        sims = torch.nn.functional.cosine_similarity(features[frame], features[reference], dim=-1)
        kept = plan.mask[frame]
        assert 0 < int(kept.sum()) < 100
        assert float(sims[kept].max()) <= float(sims[~kept].min())


def test_pivot_frames_are_whole_while_the_budget_allows():
    features = drifting_video(16, 100, 16)
    plan = select(features, 0.5, "dycoke")
    assert [plan.counts[t] for t in (0, 4, 8, 12)] == [100] * 4
    assert plan.total_kept == 800
    low = select(features, 0.15, "dycoke")  # 240 tokens < 4 whole pivots + 12 pruned frames
    assert [low.counts[t] for t in (0, 4, 8, 12)] == [57] * 4
    assert all(low.counts[t] == 1 for t in range(16) if t % 4)
    assert low.total_kept == 240
    sims = torch.nn.functional.cosine_similarity(features[4], features[5], dim=-1)
    assert float(sims[low.mask[4]].max()) <= float(sims[~low.mask[4]].min())


@pytest.mark.parametrize("units", [32, 16, 9, 7, 5])
@pytest.mark.parametrize("ratio", [0.25, 0.15])
def test_kept_share_is_within_005_of_ratio(units, ratio):
    plan = select(drifting_video(units, 196, 16), ratio, "dycoke")
    assert abs(plan.kept_ratio - ratio) <= 0.05


def test_every_frame_takes_part_odd_count_and_last_window():
    # the official code drops an odd F's last frame and keeps frame i+2 of the last window whole
    odd = select(drifting_video(7, 50, 16), 0.5, "dycoke")
    assert 0 < odd.counts[6] < 50  # frame 6 = i+2 of the last window, pruned against frame 4
    even = select(drifting_video(8, 50, 16), 0.5, "dycoke")
    assert 0 < even.counts[6] < 50
    nine = select(drifting_video(9, 50, 16), 0.5, "dycoke")
    assert nine.counts[8] == 50  # the last frame opens a window: a pivot


@pytest.mark.parametrize(("shape", "ratio", "counts"), [
    ((7, 25, 16), 0.05, [2, 1, 1, 1, 2, 1, 1]),  # was [5, 0, 0, 0, 4, 0, 0]: frames dropped whole
    ((6, 1, 4), 0.5, [1, 1, 1, 1, 1, 1]),  # was [1, 1, 0, 0, 1, 0]
    ((8, 2, 4), 0.75, [2, 2, 2, 1, 2, 1, 1, 1]),  # pivots whole, the rest over pruned frames
])
def test_every_frame_keeps_a_token(shape, ratio, counts):
    plan = select(drifting_video(*shape), ratio, "dycoke")
    assert plan.counts == counts


def test_single_frame_keeps_evenly_spaced_tokens():
    plan = select(torch.randn(1, 12, 8), 0.25, "dycoke")
    assert plan.kept[0].tolist() == [2, 6, 10]


def test_fca_variant_keeps_the_fca_counts():
    features = drifting_video(12, 49, 32)
    features[5] = torch.randn(49, 32) * 4.0
    budgets = fca_budgets(features, 0.25)
    assert len(set(budgets.tolist())) > 1
    assert select(features, 0.25, "dycoke+fca").counts == budgets.tolist()


def test_registry_ratio_one_and_no_options():
    features = torch.randn(4, 20, 8)
    plan = select(features, 1.0, "dycoke")
    assert bool(plan.mask.all()) and plan.merges is None
    with pytest.raises(ValueError, match="no option 'K'"):
        select(features, 0.25, "dycoke", options={"K": 0.7})
