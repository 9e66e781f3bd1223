"""FastVID: DySeg, budgets, ATS, density anchors and DTM merges, against a loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from vidcom2_cli.compression import VisionSignals, fca_budgets, get_method, select
from vidcom2_cli.compression.density import dpc_scores
from vidcom2_cli.compression.fastvid import frame_similarities, segment_cuts

PROFILES = ("onevision", "llava_video", "qwen")


def scene_video(units: int, tokens: int, channels: int, seed: int = 0,
                duplicates: tuple[int, ...] = ()) -> torch.Tensor:
    """Four scenes, a per-frame drift of varying size (so adjacent-frame cosines vary around
    the cut thresholds) and token noise; each frame in ``duplicates`` nearly repeats the one
    before it."""
    generator = torch.Generator().manual_seed(seed)
    scenes = torch.randn(4, 1, channels, generator=generator) * 1.5
    scene_of_frame = torch.arange(units) * 4 // units
    drift_size = 0.4 + 0.6 * torch.rand(units, 1, 1, generator=generator)
    drift = torch.randn(units, 1, channels, generator=generator) * drift_size
    features = scenes[scene_of_frame] + drift + torch.randn(units, tokens, channels,
                                                            generator=generator)
    for t in duplicates:
        features[t] = features[t - 1] + 0.02 * torch.randn(tokens, channels, generator=generator)
    return features


def probe_for(features: torch.Tensor, seed: int = 1) -> torch.Tensor:
    units, tokens, _ = features.shape
    return torch.rand(units, tokens, generator=torch.Generator().manual_seed(seed))


# --- a plain loop reference, written from the method description ----------------------------

def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b) / (a.norm().clamp(min=1e-8) * b.norm().clamp(min=1e-8)))


def ref_segments(features, c, tau):
    x = features.float()
    units = x.shape[0]
    means = [x[t].mean(dim=0) for t in range(units)]
    sims = [_cos(means[i], means[i + 1]) for i in range(units - 1)]
    by_value = sorted(range(units - 1), key=lambda i: sims[i])
    cuts = set(by_value[:c - 1]) | {i for i in range(units - 1) if sims[i] < tau}
    segments, current = [], []
    for t in range(units):
        current.append(t)
        if t in cuts or t == units - 1:
            segments.append(current)
            current = []
    return segments, sims


def ref_anchor_items(length, p):
    return [j for j in range(length) if (length - 1 - j) % p == 0]


def ref_budgets(segments, sims, units, tokens, ratio, profile, o):
    retain = max(1, math.floor(tokens * ratio))
    salient, context = [0] * units, [0] * units
    d, p = o["d"], int(o["p"])
    for segment in segments:
        length = len(segment)
        if profile == "onevision":
            per_context = math.floor(retain * d)
            anchors = [segment[j] for j in ref_anchor_items(length, p)]
            for t in segment:
                salient[t] = retain - per_context
            for t in anchors:
                context[t] = math.floor(per_context * length / len(anchors))
            continue
        sub_runs = [[segment[0]]]
        for t in segment[1:]:
            if profile == "qwen" and sims[t - 1] >= o["ignore"]:
                sub_runs[-1].append(t)
            else:
                sub_runs.append([t])
        leaders = [run[-1] for run in sub_runs]
        total = retain * length
        ctx = math.floor(total * d)
        if profile == "qwen":
            ctx = max(1, ctx)
        sal = total - ctx
        for i, t in enumerate(leaders):
            salient[t] = sal // len(leaders) + (1 if i < sal % len(leaders) else 0)
        anchors = [leaders[j] for j in ref_anchor_items(len(leaders), p)]
        for i, t in enumerate(anchors):
            late = i >= len(anchors) - ctx % len(anchors)
            context[t] = ctx // len(anchors) + (1 if late else 0)
    for t in range(units):
        if profile == "qwen":
            context[t] = min(context[t], max(1, tokens // 2))
            salient[t] = min(salient[t], tokens - context[t])
        salient[t] = min(salient[t], tokens)
        context[t] = min(context[t], tokens - salient[t])
    return salient, context


def ref_dpc(tokens, k, generator):
    count, channels = tokens.shape
    rows = [((tokens - tokens[i]).square().sum(dim=1).sqrt() / math.sqrt(channels)).tolist()
            for i in range(count)]
    noise = (torch.rand(count, generator=generator) * 1e-6).tolist()
    rho = []
    for i in range(count):
        nearest = sorted(rows[i])[:min(k, count)]
        rho.append(math.exp(-sum(v * v for v in nearest) / len(nearest)) + noise[i])
    largest = max(max(row) for row in rows)
    scores = []
    for i in range(count):
        denser = [rows[i][j] for j in range(count) if rho[j] > rho[i]]
        scores.append(rho[i] * (min(denser) if denser else largest))
    return scores


def reference_fastvid(features, probe, ratio, profile, seed=0):
    """Returns (kept set of (t, n), {(t, n): value of each kept token after merging})."""
    o = get_method("fastvid").spec.options_for(profile)
    x = features.double()
    units, tokens, _ = x.shape
    segments, sims = ref_segments(x, int(o["c"]), o["tau"])
    salient, context = ref_budgets(segments, sims, units, tokens, ratio, profile, o)
    chosen = {}
    for t in range(units):
        scores = probe[t].tolist()
        order = sorted(range(tokens), key=lambda n: (-scores[n], n))
        chosen[t] = set(order[:salient[t]])
    kept = {(t, n) for t in range(units) for n in chosen[t]}
    values = {(t, n): x[t, n] for (t, n) in kept}
    generator = torch.Generator().manual_seed(seed)
    for segment in segments:
        pool = [(t, n) for t in segment for n in range(tokens) if n not in chosen[t]]
        for t in segment:
            if context[t] == 0:
                continue
            own = [n for n in range(tokens) if n not in chosen[t]]
            scores = ref_dpc(x[t, own], int(o["k"]), generator)
            ranked = sorted(range(len(own)), key=lambda i: (-scores[i], i))
            anchors = [(t, own[i]) for i in ranked[:context[t]]]
            members = {a: [] for a in anchors}
            anchor_rows = torch.stack([x[a] for a in anchors])
            for token in pool:
                if profile != "onevision" and token in members:
                    continue
                cosines = torch.nn.functional.cosine_similarity(anchor_rows, x[token][None])
                members[anchors[int(cosines.argmax())]].append(token)
            for anchor in anchors:
                kept.add(anchor)
                group = members[anchor]
                if not group:
                    values[anchor] = x[anchor]
                    continue
                w = max(o["beta"], 1 / (len(group) + 1))
                mean = torch.stack([x[m] for m in group]).mean(dim=0)
                values[anchor] = w * x[anchor] + (1 - w) * mean
    return kept, values


# --- agreement with the reference ---------------------------------------------------------

@pytest.mark.parametrize(("profile", "shape", "duplicates"), [
    ("onevision", (32, 196, 896), ()),
    ("llava_video", (32, 169, 128), ()),
    ("qwen", (16, 180, 512), (3, 9, 10)),
    ("qwen", (16, 180, 64), ()),
])
def test_matches_loop_reference(profile, shape, duplicates):
    features = scene_video(*shape, duplicates=duplicates)
    probe = probe_for(features)
    plan = select(features, 0.25, "fastvid", signals=VisionSignals(probe=probe), profile=profile,
                  seed=5)
    kept, values = reference_fastvid(features, probe, 0.25, profile, seed=5)
    units, tokens, channels = shape
    expected = torch.zeros(units, tokens, dtype=torch.bool)
    for t, n in kept:
        expected[t, n] = True
    assert torch.equal(plan.mask, expected)
    assert plan.merges is not None and plan.total_merged > 0
    merged = plan.apply(features.reshape(-1, channels)).reshape(units, tokens, channels)
    order = sorted(kept)
    ours = torch.stack([merged[t, n] for t, n in order])
    theirs = torch.stack([values[key] for key in order]).float()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# --- properties ---------------------------------------------------------------------------

def test_dyseg_cuts_are_the_smallest_similarities_and_those_below_tau():
    sims = torch.tensor([0.99, 0.50, 0.97, 0.80, 0.98, 0.96, 0.95, 0.99])
    assert segment_cuts(sims, segments=3, tau=0.9) == [1, 3]
    assert segment_cuts(sims, segments=4, tau=0.9) == [1, 3, 6]
    assert segment_cuts(sims, segments=2, tau=0.97) == [1, 3, 5, 6]
    assert segment_cuts(torch.tensor([0.9, 0.8]), segments=8, tau=0.0) == [0, 1]


def test_dpc_scores_are_rho_times_delta():
    tokens = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
    ours = dpc_scores(tokens, 4, torch.Generator().manual_seed(3))
    theirs = ref_dpc(tokens, 4, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, torch.tensor(theirs), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("profile", PROFILES)
def test_salient_tokens_are_the_top_by_probe_in_each_frame(profile):
    features = scene_video(16, 100, 48)
    probe = probe_for(features)
    plan = select(features, 0.25, "fastvid", signals=VisionSignals(probe=probe), profile=profile)
    options = get_method("fastvid").spec.options_for(profile)
    segments, sims = ref_segments(features, int(options["c"]), options["tau"])
    salient, context = ref_budgets(segments, sims, 16, 100, 0.25, profile, options)
    for t in range(16):
        kept = set(plan.kept[t].tolist())
        top = set(torch.argsort(probe[t], descending=True)[:salient[t]].tolist())
        assert top <= kept
        assert len(kept - top) == context[t]  # the rest are the context anchors


def test_each_anchor_becomes_the_beta_weighted_mean_of_its_assignees():
    features = scene_video(12, 64, 32)
    beta = 0.6
    plan = select(features, 0.25, "fastvid", signals=VisionSignals(probe=probe_for(features)),
                  profile="llava_video")
    flat = features.reshape(-1, 32)
    merged = plan.apply(flat)
    merges = plan.merges
    for target in torch.unique(merges.targets).tolist():
        entries = merges.targets == target
        sources = merges.sources[entries].tolist()
        members = [s for s in sources if s != target]
        w = max(beta, 1 / (len(members) + 1))
        expected = w * flat[target] + (1 - w) * flat[members].mean(dim=0)
        torch.testing.assert_close(merged[target], expected, rtol=1e-5, atol=1e-5)
        # each member's most similar anchor of this anchor frame is this target
        frame = target // 64
        frame_anchors = [a for a in torch.unique(merges.targets).tolist() if a // 64 == frame]
        unit = torch.nn.functional.normalize(flat, dim=-1)
        for member in members:
            best = max(frame_anchors, key=lambda a: float(unit[member] @ unit[a]))
            assert best == target


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("ratio", [0.25, 0.15])
def test_kept_share_is_within_005_of_ratio(profile, ratio):
    # no near-duplicate frames, so qwen's sub-runs do not take budget away
    features = scene_video(32, 196, 64)
    assert float(frame_similarities(features).max()) < 0.95
    plan = select(features, ratio, "fastvid", signals=VisionSignals(probe=probe_for(features)),
                  profile=profile)
    assert abs(plan.kept_ratio - ratio) <= 0.05


def test_qwen_near_duplicate_frames_get_no_budget():
    features = scene_video(16, 180, 64, duplicates=(5,))
    plan = select(features, 0.25, "fastvid", signals=VisionSignals(probe=probe_for(features)),
                  profile="qwen")
    assert plan.counts[4] == 0 and plan.counts[5] > 0


def test_fewer_frames_than_segments_and_tiny_frames():
    features = torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(0))
    plan = select(features, 0.25, "fastvid", signals=VisionSignals(probe=probe_for(features)),
                  profile="onevision")
    assert plan.counts == [10, 10, 10]  # each frame its own segment: S 6 + C 4
    tiny = torch.randn(5, 2, 8)
    for profile in PROFILES:
        plan = select(tiny, 0.1, "fastvid", signals=VisionSignals(probe=torch.rand(5, 2)),
                      profile=profile)
        assert plan.total_kept >= 1


@pytest.mark.parametrize("profile", PROFILES)
def test_fca_variant_spends_the_fca_budgets(profile):
    features = scene_video(16, 196, 64)
    features[7] = torch.randn(196, 64) * 3.0
    budgets = fca_budgets(features, 0.25)
    assert len(set(budgets.tolist())) > 1
    signals = VisionSignals(probe=probe_for(features))
    plan = select(features, 0.25, "fastvid+fca", signals=signals, profile=profile)
    flat = select(features, 0.25, "fastvid", signals=signals, profile=profile)
    # onevision floors each segment's pooled context per anchor frame: at most one token lost
    # per frame; the straightforward profiles spend the segment sums exactly (no cap binds)
    assert int(budgets.sum()) - 16 <= plan.total_kept <= int(budgets.sum())
    assert plan.counts[7] > flat.counts[7]


# --- the registry ---------------------------------------------------------------------------

def test_ratio_one_keeps_everything_without_merges():
    features = torch.randn(4, 30, 16)
    plan = select(features, 1.0, "fastvid", signals=VisionSignals(probe=torch.rand(4, 30)))
    assert bool(plan.mask.all()) and plan.merges is None


def test_options_by_name_change_behaviour_and_unknown_ones_raise():
    features = scene_video(32, 196, 64)
    signals = VisionSignals(probe=probe_for(features))
    default = select(features, 0.25, "fastvid", signals=signals, profile="onevision")
    fewer_cuts = select(features, 0.25, "fastvid", signals=signals, profile="onevision",
                        options={"tau": 0.5})
    assert not torch.equal(default.mask, fewer_cuts.mask)
    with pytest.raises(ValueError, match="no option 'R'"):
        select(features, 0.25, "fastvid", signals=signals, options={"R": 0.1})
    with pytest.raises(ValueError, match="option 'ignore' exists only for the Qwen"):
        select(features, 0.25, "fastvid", signals=signals, profile="onevision",
               options={"ignore": 0.9})


def test_missing_probe_is_a_clear_error():
    with pytest.raises(ValueError, match="probe"):
        select(torch.randn(4, 30, 16), 0.25, "fastvid")


def test_reproducible_per_seed():
    features = scene_video(16, 100, 32)
    signals = VisionSignals(probe=probe_for(features))
    first = select(features, 0.25, "fastvid", signals=signals, seed=3)
    again = select(features, 0.25, "fastvid", signals=signals, seed=3)
    assert torch.equal(first.mask, again.mask)
    assert torch.equal(first.merges.weights, again.merges.weights)
