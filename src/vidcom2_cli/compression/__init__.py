"""VidCom2 and the field's visual-token compressors: pure torch, no knowledge of models or files."""

from .inllm import DecodeStage, InLLMStage, PrefillStage, SpanReduction, VisualSpan
from .method import (
    PROFILE_LABELS,
    PROFILES,
    SIGNALS,
    MethodInput,
    MethodSpec,
    Selection,
    VisionSignals,
)
from .methods import (
    METHODS,
    Method,
    check_method_options,
    fca_budgets,
    get_method,
    llm_stages,
    method_options,
    select,
    spread_method_options,
    vidcom2_select,
)
from .plan import KeepPlan, Merges

__all__ = [
    "METHODS",
    "PROFILES",
    "PROFILE_LABELS",
    "SIGNALS",
    "DecodeStage",
    "InLLMStage",
    "KeepPlan",
    "Merges",
    "Method",
    "MethodInput",
    "MethodSpec",
    "PrefillStage",
    "Selection",
    "SpanReduction",
    "VisionSignals",
    "VisualSpan",
    "check_method_options",
    "fca_budgets",
    "get_method",
    "llm_stages",
    "method_options",
    "select",
    "spread_method_options",
    "vidcom2_select",
]
