"""User-facing errors: each names the file, node or option at fault and maps to exit code 2."""

from __future__ import annotations


class EdgecError(Exception):
    """A mistake in what the user gave edgec. The CLI prints its message on one line and exits 2."""

    exit_code = 2


class ModelLoadError(EdgecError):
    """The model file is missing, corrupt, or refers to data outside its folder."""


class UnsupportedOpError(EdgecError):
    """A node uses an op the target or a pass cannot handle."""


class CalibrationError(EdgecError):
    """Calibration data does not match the model's inputs."""


class TargetError(EdgecError):
    """Unknown target, or a target profile that is malformed."""


class BundleError(EdgecError):
    """A bundle is malformed, tampered with, or would be written over an existing path."""


class ConfigError(EdgecError):
    """A build option or config file is invalid."""


class PrecisionError(ConfigError):
    """A precision the target cannot run (fp8 on a phone, say)."""


class ToleranceError(EdgecError):
    """A lossy pass lost more accuracy on this model than its tolerance allows.

    A property of the model (sensitive nodes, extreme weights), so exit 2 with what to try, not a bug.
    """


class VerificationError(EdgecError):
    """A transformed model failed its numeric or structural check against its input."""

    exit_code = 1
