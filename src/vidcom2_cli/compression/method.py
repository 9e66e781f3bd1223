"""What every compression method receives and declares: the contract between the registry,
the methods and the engine (which supplies vision signals only to the methods that ask)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .inllm import InLLMStage
from .plan import Merges

PROFILES = ("onevision", "llava_video", "qwen")
"""How a family's tokens look to a method whose official code differs by family:
``onevision`` (LLaVA-OneVision: SigLIP, 2x2 bilinear pooling, one newline per video),
``llava_video`` (LLaVA-Video/NeXT-Video style pooled grids) and ``qwen`` (merged patch grids
with (t, h, w) positions: Qwen2/2.5/3-VL, Qwen3.5, GLM-4V, and InternVL by default)."""
PROFILE_LABELS = {"onevision": "LLaVA-OneVision", "llava_video": "LLaVA-NeXT-Video",
                  "qwen": "the Qwen, InternVL and GLM families"}

SIGNALS = {
    "received": "attention each token receives in the vision tower's last feature layer "
                "(mean over heads and queries, pooled like the features)",
    "probe": "attention from each frame's mean query to its tokens in that layer "
             "(mean over heads, pooled like the features; Qwen-style towers: softmax over "
             "the merge units' mean keys)",
    "keys": "that layer's key vectors, mean over heads, pooled like the features",
}


@dataclass(frozen=True)
class VisionSignals:
    """Vision-tower signals laid out as the features: (T, N) scores, (T, N, Dk) keys."""

    received: torch.Tensor | None = None
    probe: torch.Tensor | None = None
    keys: torch.Tensor | None = None

    def require(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this method needs the vision signal {name!r}, which was not "
                             f"computed")
        return value


@dataclass(frozen=True)
class MethodInput:
    """One video as a method sees it.

    ``budgets`` is None for a method's own budget rule; the ``+fca`` variants set it to
    VidCom2's Frame Compression Adjustment counts (kept tokens per unit), which the method
    spends instead of its per-frame budgets.
    """

    features: torch.Tensor  # (T, N, D)
    ratio: float
    grid: tuple[int, int] | None
    profile: str
    options: Mapping[str, float]
    signals: VisionSignals = field(default_factory=VisionSignals)
    budgets: torch.Tensor | None = None
    seed: int = 0


@dataclass(frozen=True)
class Selection:
    """What a method returns: the (T, N) keep-mask and the merges into kept tokens."""

    mask: torch.Tensor
    merges: Merges | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A method family as its module declares it; the registry derives the ``+fca`` variant."""

    name: str
    keeps: str
    budget: str
    run: Callable[[MethodInput], Selection]
    signals: tuple[str, ...] = ()
    defaults: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    option_help: Mapping[str, str] = field(default_factory=dict)
    option_bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # inclusive
    option_choices: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # switches
    fca: str | None = None  # what the +fca variant does; None when there is none
    notes: str = ""
    # the method's stages inside the language model for resolved options (none when they are
    # turned off); see compression.inllm
    llm_stages: Callable[[Mapping[str, float]], tuple[InLLMStage, ...]] | None = None

    def stages_for(self, options: Mapping[str, float]) -> tuple[InLLMStage, ...]:
        """The in-LLM stages for resolved ``options``."""
        return () if self.llm_stages is None else self.llm_stages(options)

    def options_for(self, profile: str) -> dict[str, float]:
        """The defaults for a family profile (``qwen``'s where the profile has none)."""
        if not self.defaults:
            return {}
        return dict(self.defaults.get(profile, self.defaults.get("qwen", {})))
