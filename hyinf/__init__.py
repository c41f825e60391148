"""hyinf: fast, exact occlusion-based explanations of CNN predictions."""

from hyinf.compat import Occlusion
from hyinf.errors import HyinfError
from hyinf.explain import Explanation, explain
from hyinf.planner.plan import Mode, Plan

__all__ = ["Explanation", "HyinfError", "Mode", "Occlusion", "Plan", "explain"]
__version__ = "0.1.0"
