"""Named compression methods: each method family's module, with its own or VidCom2's budgets.

``vidcom2`` is VidCom2's scorer with its Frame Compression Adjustment (FCA) budgets;
``vidcom2+flat`` keeps the scorer with a flat round(R*N) per unit (the ablation). Every other
method runs with its own budget rule, and its ``+fca`` variant (where the method has a per-frame
budget to replace) spends VidCom2's FCA counts instead: the paper's plug-in experiment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..errors import did_you_mean
from .baselines import RANDOM, UNIFORM
from .checks import check_features, check_ratio
from .dycoke import DYCOKE
from .fastvid import FASTVID
from .flashvid import FLASHVID
from .holitom import HOLITOM
from .inllm import InLLMStage
from .method import PROFILE_LABELS, PROFILES, MethodInput, MethodSpec, VisionSignals
from .plan import KeepPlan
from .vidcom2 import DEFAULT_TAU, VIDCOM2, fca_counts, similarity
from .visionzip import VISIONZIP

_SPECS: tuple[MethodSpec, ...] = (VIDCOM2, FASTVID, HOLITOM, VISIONZIP, DYCOKE, FLASHVID, RANDOM,
                                  UNIFORM)


@dataclass(frozen=True)
class Method:
    """A method family and whether it spends VidCom2's FCA budgets."""

    name: str
    spec: MethodSpec
    fca: bool

    @property
    def signals(self) -> tuple[str, ...]:
        return self.spec.signals

    @property
    def budget(self) -> str:
        if self.fca and self.spec.fca:
            return self.spec.fca
        return "VidCom2 FCA budgets" if self.fca else self.spec.budget

    @property
    def description(self) -> str:
        return f"{self.spec.keeps}; {self.budget}"


def _build_methods() -> dict[str, Method]:
    methods: dict[str, Method] = {}
    for spec in _SPECS:
        if spec is VIDCOM2:
            methods[spec.name] = Method(spec.name, spec, fca=True)
            methods[f"{spec.name}+flat"] = Method(f"{spec.name}+flat", spec, fca=False)
            continue
        methods[spec.name] = Method(spec.name, spec, fca=False)
        if spec.fca:
            methods[f"{spec.name}+fca"] = Method(f"{spec.name}+fca", spec, fca=True)
    return methods


METHODS: dict[str, Method] = _build_methods()


def get_method(name: str) -> Method:
    """Look a method up by name; ValueError lists the known names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown compression method {name!r}{did_you_mean(name, METHODS)}; "
                         f"choose one of: {', '.join(METHODS)}") from None


def method_options(method: str, profile: str, overrides: Mapping[str, float] | None = None
                   ) -> dict[str, float]:
    """A method's hyperparameters for a family profile, with ``overrides`` by name; a name the
    method does not have is a ValueError that lists the ones it has."""
    spec = get_method(method).spec
    options = spec.options_for(profile)
    for name, value in (overrides or {}).items():
        if name not in options:
            elsewhere = [other for other in PROFILES if other != profile
                         and name in spec.options_for(other)]
            if elsewhere:
                raise ValueError(
                    f"method {method!r}: option {name!r} exists only for "
                    f"{' and '.join(PROFILE_LABELS[other] for other in elsewhere)}, not for "
                    f"{PROFILE_LABELS[profile]} (`vidcom2 methods {method}` lists each family's)")
            known = ", ".join(options) or "none"
            raise ValueError(f"method {method!r} has no option {name!r}"
                             f"{did_you_mean(name, options)} (options: {known})")
        options[name] = float(value)
    for name, (low, high) in spec.option_bounds.items():
        if name in options and not low <= options[name] <= high:
            raise ValueError(f"method {method!r}: {name} must be in [{low:g}, {high:g}], got "
                             f"{options[name]:g}")
    for name, choices in spec.option_choices.items():
        if name in options and options[name] not in choices:
            allowed = " or ".join(f"{choice:g}" for choice in choices)
            raise ValueError(f"method {method!r}: {name} must be {allowed}, got "
                             f"{options[name]:g}")
    return options


def check_method_options(method: str, overrides: Mapping[str, float]) -> None:
    """ValueError unless ``overrides`` suit the method on some family profile: what can be
    refused before a model (and so its profile) is loaded; ``method_options`` checks the rest."""
    errors = []
    for profile in PROFILES:
        try:
            method_options(method, profile, overrides)
            return
        except ValueError as error:
            errors.append(error)
    raise errors[0]


def spread_method_options(methods: Iterable[str], overrides: Iterable[tuple[str, float]],
                          profile: str | None = None) -> dict[str, tuple[tuple[str, float], ...]]:
    """Each method's share of one set of overrides given to several methods (a bench or an
    eval sweep): a value goes to every method that has the option on ``profile``, or on any
    profile when it is None (before a model is known). ValueError for an option none of the
    methods has, or a value out of its method's range."""
    overrides = tuple(overrides)
    shares = {}
    for method in dict.fromkeys(methods):
        spec = get_method(method).spec
        known = (spec.options_for(profile) if profile is not None
                 else {name for defaults in spec.defaults.values() for name in defaults})
        shares[method] = tuple((name, value) for name, value in overrides if name in known)
    for name, _ in overrides:
        if not any(name in dict(share) for share in shares.values()):
            raise ValueError(f"none of the methods has an option {name!r}")
    for method, share in shares.items():
        if profile is None:
            check_method_options(method, dict(share))
        else:
            method_options(method, profile, dict(share))
    return shares


def select(features: torch.Tensor, ratio: float, method: str = "vidcom2", *, seed: int = 0,
           tau: float = DEFAULT_TAU, grid: tuple[int, int] | None = None,
           signals: VisionSignals | None = None, options: Mapping[str, float] | None = None,
           profile: str = "qwen") -> KeepPlan:
    """Choose (and, for merging methods, fold) the visual tokens of one video.

    ``features``: (T units, N tokens per unit in raster order, D channels), any float dtype and
    device. ``ratio``: the fraction of tokens to keep, in (0, 1]. ``signals``: the vision-tower
    signals the method declares (``get_method(name).signals``). ``options``: hyperparameter
    overrides by name. Returns a KeepPlan on the features' device.
    """
    spec_method = get_method(method)
    ratio = check_ratio(ratio)
    check_features(features)
    if profile not in PROFILES:
        raise ValueError(f"unknown family profile {profile!r}; choose one of: "
                         f"{', '.join(PROFILES)}")
    resolved = method_options(method, profile, options)
    units, tokens, _ = features.shape
    if ratio == 1.0:
        mask = torch.ones(units, tokens, dtype=torch.bool, device=features.device)
        return KeepPlan(mask=mask, method=spec_method.name, ratio=ratio, grid=grid)
    budgets = fca_counts(similarity(features), ratio, tau) if spec_method.fca else None
    chosen = spec_method.spec.run(MethodInput(
        features=features, ratio=ratio, grid=grid, profile=profile, options=resolved,
        signals=signals or VisionSignals(), budgets=budgets, seed=seed))
    return KeepPlan(mask=chosen.mask, method=spec_method.name, ratio=ratio, grid=grid,
                    merges=chosen.merges, stages=spec_method.spec.stages_for(resolved))


def llm_stages(method: str, profile: str, overrides: Mapping[str, float] | None = None
               ) -> tuple[InLLMStage, ...]:
    """The stages a method runs inside the language model below R = 1.0 on a family profile
    (none when its options turn them off); ValueError as ``method_options``."""
    return get_method(method).spec.stages_for(method_options(method, profile, overrides))


def vidcom2_select(features: torch.Tensor, ratio: float) -> list[torch.Tensor]:
    """VidCom2's kept tokens: per unit, a sorted int64 tensor of local indices."""
    return select(features, ratio, "vidcom2").kept


def fca_budgets(features: torch.Tensor, ratio: float, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """VidCom2's Frame Compression Adjustment budgets (steps 1-7): kept tokens per unit (int64)."""
    ratio = check_ratio(ratio)
    check_features(features)
    return fca_counts(similarity(features), ratio, tau)
