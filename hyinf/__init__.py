"""hyinf: fast, exact occlusion-based explanations of CNN predictions."""

__version__ = "0.1.0"  # first: modules imported below read it

from hyinf.compat import Occlusion  # noqa: E402
from hyinf.errors import HyinfError  # noqa: E402
from hyinf.explain import Approximation, Explanation, explain  # noqa: E402
from hyinf.planner.document import PlanDocument  # noqa: E402
from hyinf.planner.plan import Mode, Plan  # noqa: E402
from hyinf.quality import Quality  # noqa: E402

__all__ = ["Approximation", "Explanation", "HyinfError", "Mode", "Occlusion", "Plan", "PlanDocument", "Quality", "explain"]
