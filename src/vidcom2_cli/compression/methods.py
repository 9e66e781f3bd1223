"""Named compression methods: a token selector paired with a budget allocator.

``vidcom2`` is VidCom2's scorer with its Frame Compression Adjustment (FCA) budgets. The
baselines ``random`` and ``uniform`` use a flat budget of round(R * N) per unit; the ``+fca``
variants give them VidCom2's per-frame budgets instead (the paper's plug-in experiment), and
``vidcom2+flat`` is the ablation that keeps VidCom2's scorer with flat budgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .baselines import evenly_spaced_mask, random_mask
from .checks import check_features, check_ratio
from .plan import KeepPlan
from .vidcom2 import (
    DEFAULT_TAU,
    Similarity,
    fca_counts,
    keep_lowest,
    similarity,
    uniform_counts,
    vidcom2_scores,
)


class _Lazy:
    """Computes VidCom2's similarities at most once per selection, only if something needs them."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features
        self._similarity: Similarity | None = None

    @property
    def similarity(self) -> Similarity:
        if self._similarity is None:
            self._similarity = similarity(self.features)
        return self._similarity


Budget = Callable[[_Lazy, float, float], torch.Tensor]
Selector = Callable[[_Lazy, torch.Tensor, int], torch.Tensor]


def _flat_budget(state: _Lazy, ratio: float, tau: float) -> torch.Tensor:
    units, tokens, _ = state.features.shape
    return uniform_counts(units, tokens, ratio, device=state.features.device)


def _fca_budget(state: _Lazy, ratio: float, tau: float) -> torch.Tensor:
    return fca_counts(state.similarity, ratio, tau)


def _vidcom2_selector(state: _Lazy, counts: torch.Tensor, seed: int) -> torch.Tensor:
    return keep_lowest(vidcom2_scores(state.similarity), counts)


def _random_selector(state: _Lazy, counts: torch.Tensor, seed: int) -> torch.Tensor:
    units, tokens, _ = state.features.shape
    return random_mask(units, tokens, counts, seed)


def _uniform_selector(state: _Lazy, counts: torch.Tensor, seed: int) -> torch.Tensor:
    return evenly_spaced_mask(state.features.shape[1], counts)


BUDGETS: dict[str, Budget] = {"fca": _fca_budget, "flat": _flat_budget}


@dataclass(frozen=True)
class Method:
    """A selector and the budget allocator it runs with."""

    name: str
    selector: str
    budget: str
    description: str


_SELECTORS: dict[str, tuple[Selector, str, str]] = {
    # name: (selector, default budget, what it keeps)
    "vidcom2": (_vidcom2_selector, "fca", "tokens least like their frame and the video"),
    "random": (_random_selector, "flat", "tokens drawn at random (seeded)"),
    "uniform": (_uniform_selector, "flat", "tokens evenly spaced in raster order"),
}

_BUDGET_WORDS = {"fca": "VidCom2 FCA budgets", "flat": "a flat round(R*N) per unit"}


def _build_methods() -> dict[str, Method]:
    methods = {}
    for selector, (_, default_budget, keeps) in _SELECTORS.items():
        for budget in BUDGETS:
            name = selector if budget == default_budget else f"{selector}+{budget}"
            description = f"{keeps}, {_BUDGET_WORDS[budget]}"
            methods[name] = Method(name, selector, budget, description)
    return methods


METHODS: dict[str, Method] = _build_methods()


def get_method(name: str) -> Method:
    """Look a method up by name; ValueError lists the known names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(METHODS)
        raise ValueError(f"unknown compression method {name!r}; choose one of: {known}") from None


def select(features: torch.Tensor, ratio: float, method: str = "vidcom2", *, seed: int = 0,
           tau: float = DEFAULT_TAU, grid: tuple[int, int] | None = None) -> KeepPlan:
    """Choose the visual tokens of one video to keep.

    ``features``: (T units, N tokens per unit in raster order, D channels), any float dtype and
    device. ``ratio``: the fraction of tokens to keep, in (0, 1]. Returns a KeepPlan on the
    features' device.
    """
    spec = get_method(method)
    ratio = check_ratio(ratio)
    check_features(features)
    units, tokens, _ = features.shape
    if ratio == 1.0:
        mask = torch.ones(units, tokens, dtype=torch.bool, device=features.device)
        return KeepPlan(mask=mask, method=spec.name, ratio=ratio, grid=grid)
    state = _Lazy(features)
    counts = BUDGETS[spec.budget](state, ratio, tau)
    mask = _SELECTORS[spec.selector][0](state, counts, seed)
    return KeepPlan(mask=mask, method=spec.name, ratio=ratio, grid=grid)


def vidcom2_select(features: torch.Tensor, ratio: float) -> list[torch.Tensor]:
    """VidCom2's kept tokens: per unit, a sorted int64 tensor of local indices."""
    return select(features, ratio, "vidcom2").kept


def fca_budgets(features: torch.Tensor, ratio: float, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """VidCom2's Frame Compression Adjustment budgets (steps 1-7): kept tokens per unit (int64)."""
    ratio = check_ratio(ratio)
    check_features(features)
    return fca_counts(similarity(features), ratio, tau)
