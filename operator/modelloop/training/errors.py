"""Why a training run failed: one exception per reason, each with the trainer's exit code.

The CLI writes `<Reason>: <message>` (one line) to the termination-message file and exits with the
code, so the controller can show the message and tell the reasons apart without parsing it.
"""
from __future__ import annotations

import re


class TrainingError(Exception):
    """A failure the user can act on; the message names the field or data at fault."""

    reason = "TrainingFailed"
    exit_code = 1
    # False when running the same spec again cannot succeed (the Job should fail at once, not retry).
    retryable = True

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # one line, whatever the cause said

    @property
    def termination_message(self) -> str:
        return f"{self.reason}: {self}"


class SpecError(TrainingError):
    """The spec (or the command line) is invalid: disallowed estimator, unknown params, bad metric."""

    reason, exit_code, retryable = "InvalidSpec", 2, False


class DatasetUnreadableError(TrainingError):
    """The dataset could not be fetched or parsed."""

    reason, exit_code = "DatasetUnreadable", 3


class DatasetInvalidError(TrainingError):
    """The dataset was read but does not fit the spec: missing columns, unusable types, too few rows."""

    reason, exit_code, retryable = "DatasetInvalid", 4, False


class FitError(TrainingError):
    """Fitting, evaluating or serialising the model failed."""

    reason, exit_code, retryable = "FitFailed", 5, False


class VersionExistsError(TrainingError):
    """The version this run was given is already committed; versions are immutable."""

    reason, exit_code, retryable = "VersionExists", 6, False


class OutputError(TrainingError):
    """The output store could not be read or written."""

    reason, exit_code = "OutputFailed", 7


INTERNAL_ERROR_EXIT_CODE = 1
REASONS = (SpecError, DatasetUnreadableError, DatasetInvalidError, FitError, VersionExistsError, OutputError)
EXIT_CODES = {cls.reason: cls.exit_code for cls in REASONS}
# Exit codes of failures that a retry of the same spec cannot fix (for a Job's podFailurePolicy).
USER_ERROR_EXIT_CODES = sorted(cls.exit_code for cls in REASONS if not cls.retryable)


# What libraries quote of the data: quoted strings, bracketed or braced lists, numbers with a fraction
# or an exponent. Integers stay: they are counts, line numbers and column positions.
_QUOTED = re.compile(r"""'[^'\n]*'|"[^"\n]*"|`[^`\n]*`""")
_GROUPED = re.compile(r"\[[^\[\]]*\]|\{[^{}]*\}")
_FRACTIONAL = re.compile(r"(?<![\w.])[-+]?(\d+\.\d*|\.\d+|\d+(?=[eE]))([eE][-+]?\d+)?(?![\w.])")
SCRUBBED = "…"


def scrub(text: str) -> str:
    """A library's message without the data values it quotes. A failed run's message travels to the
    ModelTraining's status, its Events and alerts, which people without access to the data can read;
    column names and URIs come from our own messages, not from here."""
    text = _QUOTED.sub(f"'{SCRUBBED}'", text)
    while True:  # innermost groups first; the placeholder has no brackets, so outer groups match next
        shorter = _GROUPED.sub("\0", text)
        if shorter == text:
            break
        text = shorter
    return _FRACTIONAL.sub(SCRUBBED, text).replace("\0", f"[{SCRUBBED}]")


def describe_exception(exc: BaseException) -> str:
    """`Type: message` of an exception raised by a library on the user's data, scrubbed of values."""
    return f"{type(exc).__name__}: {scrub(str(exc))}"
