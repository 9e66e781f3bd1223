"""HoliTom's outer stage: the segmentation's optimality, static means, DPC beta merges,
attention top-k, a plain loop reference, retention and the registry."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vidcom2_cli.compression import VisionSignals, fca_budgets, select
from vidcom2_cli.compression.holitom import Window, cluster_merges, segment

DEFAULTS = {"tau": 0.8, "beta": 0.6, "D": 0.0, "K": 7, "max_window": 1024}


def video_with_static_regions(units: int, tokens: int, channels: int, seed: int = 0
                              ) -> torch.Tensor:
    """Scenes of several frames whose background tokens barely change (cosine about 0.9
    between frames) while a quarter of the positions move (fresh tokens every frame)."""
    generator = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(units - 1, generator=generator)[:max(1, units // 6)].tolist())
    scene_of_frame = torch.zeros(units, dtype=torch.long)
    for cut in cuts:
        scene_of_frame[cut + 1:] += 1
    scenes = int(scene_of_frame.max()) + 1
    backgrounds = torch.randn(scenes, tokens, channels, generator=generator)
    moving = torch.rand(scenes, tokens, generator=generator) < 0.25
    features = backgrounds[scene_of_frame] + 0.3 * torch.randn(
        units, tokens, channels, generator=generator)
    fresh = torch.randn(units, tokens, channels, generator=generator)
    return torch.where(moving[scene_of_frame][..., None], fresh, features)


def merged_features(plan, features: torch.Tensor) -> torch.Tensor:
    units, tokens, channels = features.shape
    return plan.apply(features.reshape(units * tokens, channels)).reshape(units, tokens, channels)


# --- a plain loop reference written from the description ----------------------------------

def reference_segment(static: list[list[bool]], units: int, max_window: int
                      ) -> tuple[list[tuple[int, int]], int]:
    tokens = len(static[0]) if static else 0
    best, start = [0] * units, list(range(units))
    for last in range(units):
        best[last] = best[last - 1] if last > 0 else 0
        for length in range(2, min(last + 1, max_window) + 1):
            first = last - length + 1
            count = sum(all(static[p][j] for p in range(first, last)) for j in range(tokens))
            value = (best[first - 1] if first > 0 else 0) + count * (length - 1)
            if value > best[last]:
                best[last], start[last] = value, first
    windows, last = [], units - 1
    while last >= 0:
        windows.append((start[last], last))
        last = start[last] - 1
    return windows[::-1], best[-1]


def reference_dpc_centres(means: torch.Tensor, centres: int, k: int,
                          generator: torch.Generator) -> tuple[list[int], list[int]]:
    """DPC-kNN centres (by descending score) and each token's nearest centre."""
    count, dim = means.shape
    distance = [((means - means[i]) ** 2).sum(dim=1).sqrt() / math.sqrt(dim)
                for i in range(count)]
    rows = [row.tolist() for row in distance]
    noise = torch.rand(count, generator=generator) * 1e-6
    rho = [math.exp(-sum(d * d for d in sorted(rows[i])[:k]) / k) for i in range(count)]
    rho = [float(torch.tensor(r, dtype=torch.float32) + noise[i]) for i, r in enumerate(rho)]
    largest = max(max(row) for row in rows)
    scores = []
    for i in range(count):
        higher = [rows[i][j] for j in range(count) if rho[j] > rho[i]]
        scores.append(rho[i] * (min(higher) if higher else largest))
    chosen = sorted(range(count), key=lambda i: -scores[i])[:centres]
    owner = []
    for i in range(count):
        if i in chosen:
            owner.append(i)
            continue
        nearest = min(chosen, key=lambda c: (rows[i][c], chosen.index(c)))
        owner.append(nearest)
    return chosen, owner


def reference_holitom(features: torch.Tensor, received: torch.Tensor, ratio: float,
                      options: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, merged features) of HoliTom's outer stage with D = 0, loop by loop."""
    units, tokens, _ = features.shape
    x = features.float()
    static = [[float(torch.nn.functional.cosine_similarity(x[p, j], x[p + 1, j], dim=0))
               > options["tau"] for j in range(tokens)] for p in range(units - 1)]
    windows, reduced = reference_segment(static, units, int(options["max_window"]))
    total = units * tokens
    rescaled = min(ratio / ((total - reduced) / total), 1.0)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(units, tokens, dtype=torch.bool)
    merged = x.clone()
    for first, last in windows:
        frames = list(range(first, last + 1))
        positions = [j for j in range(tokens)
                     if last > first and all(static[p][j] for p in range(first, last))]
        centres = max(1, round(len(positions) * rescaled)) if positions else 0
        if centres > 0:
            means = torch.stack([x[frames, j].mean(dim=0) for j in positions])
            k = min(int(options["K"]), centres)
            chosen, owner = reference_dpc_centres(means, centres, k, generator)
            for c in chosen:
                members = [i for i in range(len(positions)) if owner[i] == c and i != c]
                value = means[c]
                if members:
                    value = (options["beta"] * means[c]
                             + (1 - options["beta"]) * means[members].mean(dim=0))
                mask[first, positions[c]] = True
                merged[first, positions[c]] = value
        dynamic = [j for j in range(tokens) if j not in positions]
        for t in frames:
            budget = math.ceil(len(dynamic) * rescaled)
            ranked = sorted(dynamic, key=lambda j: (-float(received[t, j]), j))
            for j in ranked[:budget]:
                mask[t, j] = True
    return mask, merged


@pytest.mark.parametrize(("shape", "profile"), [((32, 196, 64), "onevision"),
                                                ((32, 196, 896), "llava_video"),
                                                ((16, 180, 512), "qwen")])
@pytest.mark.parametrize("ratio", [0.25, 0.15])
def test_matches_loop_reference_on_realistic_shapes(shape, profile, ratio):
    features = video_with_static_regions(*shape, seed=shape[2])
    received = torch.rand(shape[:2], generator=torch.Generator().manual_seed(9))
    plan = select(features, ratio, "holitom", signals=VisionSignals(received=received),
                  profile=profile, seed=3)
    mask, merged = reference_holitom(features, received, ratio, DEFAULTS, seed=3)
    assert plan.merges is not None and plan.total_merged > 0
    assert torch.equal(plan.mask, mask)
    ours = merged_features(plan, features.float())
    torch.testing.assert_close(ours[plan.mask], merged[plan.mask], atol=1e-4, rtol=1e-4)


# --- properties -----------------------------------------------------------------------------

def saved_tokens(windows: list[tuple[int, int]], static: torch.Tensor) -> int:
    saved = 0
    for first, last in windows:
        if last > first:
            saved += int(static[first:last].all(dim=0).sum()) * (last - first)
    return saved


def all_segmentations(units: int, max_window: int):
    for cuts in itertools.product([False, True], repeat=units - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [units]
        windows = [(a, b - 1) for a, b in itertools.pairwise(bounds)]
        if all(b - a + 1 <= max_window for a, b in windows):
            yield windows


@pytest.mark.parametrize("units", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("density", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("max_window", [2, 3, 1024])
def test_segmentation_maximises_saved_tokens(units, density, max_window):
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        static = torch.rand(units - 1, 6, generator=generator) < density
        windows, reduced = segment(static, max_window)
        best = max(saved_tokens(w, static) for w in all_segmentations(units, max_window))
        assert reduced == best == saved_tokens(windows, static)
        assert [w for window in windows for w in range(window[0], window[1] + 1)] == list(
            range(units))
        assert all(last - first + 1 <= max_window for first, last in windows)


def test_segmentation_keeps_single_frames_when_nothing_is_saved():
    windows, reduced = segment(torch.zeros(4, 6, dtype=torch.bool), 1024)
    assert (windows, reduced) == ([(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)], 0)


def test_static_tokens_are_window_means_at_the_first_frame():
    # Frames 0-3 share a background at every position but 0..3 (moving), so one window with
    # 12 static positions; at R = 0.9 r' clamps to 1: every static token is its own centre.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 16, 32, generator=generator) + 0.1 * torch.randn(
        4, 16, 32, generator=generator)
    features[:, :4] = torch.randn(4, 4, 32, generator=generator)
    plan = select(features, 0.9, "holitom", signals=VisionSignals(received=torch.rand(4, 16)))
    assert plan.counts == [16, 4, 4, 4]
    merged = merged_features(plan, features)
    torch.testing.assert_close(merged[0, 4:], features[:, 4:].mean(dim=0))
    torch.testing.assert_close(merged[:, :4], features[:, :4])


def test_dpc_merge_is_beta_centre_plus_rest_mean_of_members():
    generator = torch.Generator().manual_seed(1)
    window = Window(first=2, last=4, static=torch.ones(10, dtype=torch.bool))
    features = torch.randn(6, 10, 16, generator=generator)
    positions = torch.arange(10)
    means = features[2:5].mean(dim=0)
    kept, merges = cluster_merges(positions, window, 10, 3, 0.6, means, 3,
                                  torch.Generator().manual_seed(0))
    centres = kept - 2 * 10
    assert kept.numel() == 3 and bool((kept >= 20).all() & (kept < 30).all())
    owner = torch.cdist(means, means[centres]).argmin(dim=1)
    merged = merges.apply(features.reshape(60, 16)).reshape(6, 10, 16)
    for index, centre in enumerate(centres.tolist()):
        members = [j for j in range(10) if owner[j] == index and j != centre]
        expected = means[centre]
        if members:
            expected = 0.6 * means[centre] + 0.4 * means[members].mean(dim=0)
        torch.testing.assert_close(merged[2, centre], expected)


def test_dynamic_tokens_are_the_top_by_attention():
    # tau = 1: nothing is static, every frame is its own window and r' = R.
    features = torch.randn(4, 49, 16)
    received = torch.rand(4, 49)
    plan = select(features, 0.25, "holitom", signals=VisionSignals(received=received),
                  options={"tau": 1.0})
    top = torch.topk(received, math.ceil(49 * 0.25), dim=1).indices
    assert torch.equal(plan.mask, torch.zeros(4, 49, dtype=torch.bool).scatter_(1, top, True))
    assert plan.merges is None


@pytest.mark.parametrize("ratio", [0.25, 0.15])
@pytest.mark.parametrize(("shape", "profile"), [((32, 196, 256), "onevision"),
                                                ((64, 169, 256), "llava_video"),
                                                ((16, 180, 256), "qwen")])
def test_kept_tokens_are_within_five_points_of_the_ratio(ratio, shape, profile):
    features = video_with_static_regions(*shape, seed=1)
    received = torch.rand(shape[:2])
    for method in ("holitom", "holitom+fca"):
        plan = select(features, ratio, method, signals=VisionSignals(received=received),
                      profile=profile)
        assert plan.total_merged > 0
        assert abs(plan.kept_ratio - ratio) <= 0.05, (method, plan.kept_ratio)


def test_fca_variant_scales_dynamic_budgets_by_fca_counts():
    features = torch.randn(12, 49, 64, generator=torch.Generator().manual_seed(2))
    features[4] += 3.0 * torch.randn(64)
    budgets = fca_budgets(features, 0.25)
    assert len(set(budgets.tolist())) > 1
    plan = select(features, 0.25, "holitom+fca", signals=VisionSignals(received=torch.rand(12, 49)),
                  options={"tau": 1.0})
    assert all(abs(ours - theirs) <= 1 for ours, theirs in zip(plan.counts, budgets.tolist(),
                                                                strict=True))
    assert len(set(plan.counts)) > 1


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 10), st.integers(1, 30), st.integers(2, 16)),
       ratio=st.floats(0.01, 0.99), seed=st.integers(0, 2**16),
       method=st.sampled_from(["holitom", "holitom+fca"]), contextual=st.sampled_from([0, 0.5]))
def test_plan_invariants(shape, ratio, seed, method, contextual):
    """Shapes hold for any input; with D = 0 every merged token is a convex combination
    (weights summing to 1) of tokens that fold into no other token."""
    units, tokens, _ = shape
    features = video_with_static_regions(*shape, seed=seed)
    received = torch.rand(units, tokens, generator=torch.Generator().manual_seed(seed))
    plan = select(features, ratio, method, signals=VisionSignals(received=received),
                  options={"D": contextual}, seed=seed)
    assert plan.mask.shape == (units, tokens)
    assert 1 <= plan.total_kept <= units * tokens
    if plan.merges is not None and contextual == 0:
        merges = plan.merges
        assert merges.sources.unique().numel() == merges.sources.numel()
        sums = torch.zeros(units * tokens).index_add_(0, merges.targets, merges.weights)
        assert bool(((sums[merges.targets] - 1).abs() < 1e-5).all())


@pytest.mark.parametrize("method", ["holitom", "holitom+fca"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_window_of_static_positions_keeps_a_token(method, seed):
    """Found by test_plan_invariants: (3 units, 1 token, 2 channels) at R = 0.125 is one window
    whose only position is static; round(1 * r') = round(0.375) is 0, and the video kept no
    token at all. The window now keeps one centre, the mean of its three frames."""
    features = video_with_static_regions(3, 1, 2, seed=seed)
    received = torch.rand(3, 1, generator=torch.Generator().manual_seed(seed))
    plan = select(features, 0.125, method, signals=VisionSignals(received=received), seed=seed)
    assert plan.counts == [1, 0, 0]
    torch.testing.assert_close(merged_features(plan, features)[0, 0], features[:, 0].mean(dim=0))


# --- registry ---------------------------------------------------------------------------------

def test_ratio_one_keeps_everything_without_merges():
    plan = select(torch.randn(3, 20, 8), 1.0, "holitom",
                  signals=VisionSignals(received=torch.rand(3, 20)))
    assert bool(plan.mask.all())
    assert plan.merges is None


@pytest.mark.parametrize("override", [{"tau": 0.95}, {"beta": 0.2}, {"D": 0.5}, {"K": 1},
                                      {"max_window": 2}])
def test_option_overrides_change_the_result(override):
    features = video_with_static_regions(16, 49, 64, seed=4)
    signals = VisionSignals(received=torch.rand(16, 49))
    default = select(features, 0.25, "holitom", signals=signals)
    changed = select(features, 0.25, "holitom", signals=signals, options=override)
    flat = features.reshape(-1, 64)
    assert not (torch.equal(default.mask, changed.mask)
                and torch.allclose(default.apply(flat), changed.apply(flat)))


def test_unknown_option_and_missing_signal_are_value_errors():
    signals = VisionSignals(received=torch.rand(2, 20))
    with pytest.raises(ValueError, match="no option 'r'"):
        select(torch.randn(2, 20, 8), 0.25, "holitom", signals=signals, options={"r": 0.1})
    with pytest.raises(ValueError, match="beta"):
        select(torch.randn(2, 20, 8), 0.25, "holitom", signals=signals, options={"beta": 2})
    with pytest.raises(ValueError, match="'received'"):
        select(torch.randn(2, 20, 8), 0.25, "holitom")
