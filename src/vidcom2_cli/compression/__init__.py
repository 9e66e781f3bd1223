"""VidCom2 and baseline visual-token selectors: pure torch, no knowledge of models or files."""

from .methods import METHODS, Method, fca_budgets, get_method, select, vidcom2_select
from .plan import KeepPlan

__all__ = ["METHODS", "KeepPlan", "Method", "fca_budgets", "get_method", "select",
           "vidcom2_select"]
