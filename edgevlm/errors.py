"""User-facing error types.

Every error a user can cause (bad image, bad bundle, bad option) is an EdgeVLMError:
the CLI prints its message on one line and exits with code 2, never a traceback.
"""


class EdgeVLMError(Exception):
    """Base class: a one-line, user-facing error (exit code 2)."""

    exit_code = 2


class ImageError(EdgeVLMError):
    """An image could not be read or is not acceptable."""


class BundleError(EdgeVLMError):
    """A model bundle is missing, malformed, or fails verification."""


class ConfigError(EdgeVLMError):
    """A configuration (model config, option value) is invalid."""


class CheckpointError(EdgeVLMError):
    """A checkpoint is malformed or does not match its config."""


class GenerationError(EdgeVLMError):
    """A generation request is out of bounds (too long, too many tokens, timeout)."""
