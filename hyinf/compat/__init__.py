"""Drop-in replacements for other libraries' occlusion APIs."""

from hyinf.compat.occlusion import Occlusion, RunInfo

__all__ = ["Occlusion", "RunInfo"]
