"""The names of a run's choices, importable without torch (the CLI's options list them)."""

MODES = ("hybrid", "incremental", "full", "naive")
OUTPUTS = ("raw", "softmax")
BACKENDS = ("torch", "ort")
BACKEND_CHOICES = (*BACKENDS, "auto")  # auto: the backend the cost models predict faster (`hyinf.planner.select.choose_backend`)
#: What a run computes in on a GPU (hyinf/runtime/precision.py): float32 (exact) or TF32 (approximate).
PRECISIONS = ("float32", "tf32")
