"""Errors a user can cause and fix. The CLI prints them as one line; anything else is a bug."""


class HyinfError(Exception):
    """Base class for user-facing errors: the message says what is wrong and how to fix it."""


class SettingsError(HyinfError, ValueError):
    """Impossible occlusion settings (patch, stride, target, image size, memory budget)."""


class ModelError(HyinfError):
    """A model that cannot be loaded or traced."""


class InputError(HyinfError):
    """An image or other input file that cannot be read."""


class CaptumArgumentError(SettingsError, AssertionError):
    """A bad window, stride, target or baseline given to `hyinf.Occlusion`.

    Also an AssertionError, because captum.attr.Occlusion raises AssertionError for these and code
    written against captum may catch it.
    """


class PlanError(HyinfError):
    """A plan file or stored plan that is malformed, of an unknown version, or made for another model."""


class PlanWarning(UserWarning):
    """A plan used where it may be slower than planned (made for another device)."""
