"""The names of a run's choices, importable without torch (the CLI's options list them)."""

MODES = ("hybrid", "incremental", "full", "naive")
OUTPUTS = ("raw", "softmax")
BACKENDS = ("torch", "ort")
