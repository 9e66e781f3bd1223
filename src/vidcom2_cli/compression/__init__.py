"""VidCom2 and the field's visual-token compressors: pure torch, no knowledge of models or files."""

from .method import PROFILES, SIGNALS, MethodInput, MethodSpec, Selection, VisionSignals
from .methods import (
    METHODS,
    Method,
    fca_budgets,
    get_method,
    method_options,
    select,
    vidcom2_select,
)
from .plan import KeepPlan, Merges

__all__ = ["METHODS", "PROFILES", "SIGNALS", "KeepPlan", "Merges", "Method", "MethodInput",
           "MethodSpec", "Selection", "VisionSignals", "fca_budgets", "get_method",
           "method_options", "select", "vidcom2_select"]
