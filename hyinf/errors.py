"""Errors a user can cause and fix. The CLI prints them as one line; anything else is a bug."""


class HyinfError(Exception):
    """Base class for user-facing errors: the message says what is wrong and how to fix it."""


class SettingsError(HyinfError, ValueError):
    """Impossible occlusion settings (patch, stride, target, image size, memory budget)."""


class ModelError(HyinfError):
    """A model that cannot be loaded or traced."""


class InputError(HyinfError):
    """An image or other input file that cannot be read."""
