"""hyinf: fast, exact occlusion-based explanations of CNN predictions.

The public names load on first use (PEP 562), so `import hyinf` and `hyinf --help` do not pay for
torch, ONNX and the engine until a call needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Approximation": "hyinf.explain",
    "Explanation": "hyinf.explain",
    "explain": "hyinf.explain",
    "Explainer": "hyinf.explainer",
    "HyinfError": "hyinf.errors",
    "Occlusion": "hyinf.compat",
    "PlanDocument": "hyinf.planner.document",
    "Mode": "hyinf.planner.plan",
    "Plan": "hyinf.planner.plan",
    "Quality": "hyinf.quality",
}
__all__ = sorted(_WHERE)

if TYPE_CHECKING:
    from hyinf.compat import Occlusion
    from hyinf.errors import HyinfError
    from hyinf.explain import Approximation, Explanation, explain
    from hyinf.explainer import Explainer
    from hyinf.planner.document import PlanDocument
    from hyinf.planner.plan import Mode, Plan
    from hyinf.quality import Quality


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hyinf' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


class _Package(types.ModuleType):
    """Importing the submodule hyinf.explain sets the package's attribute `explain` to that module;
    the public name is the function, so the import system's assignment is not kept."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
