"""Domain exceptions.

Every message names the thing, what was expected, what was found, and what to
do about it. The command line turns each of them into the exit code of
:data:`EXIT_CODES` (see :func:`exit_code`) with a single line on stderr.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "EXIT_GROUP_LEVEL",
    "EXIT_INPUT_DATA",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_MODEL_BUNDLE",
    "EXIT_OK",
    "EXIT_PARTICIPANTS_FAILED",
    "EXIT_USAGE",
    "AnatOutputsMissingError",
    "AtlasError",
    "BIDSError",
    "BrainageError",
    "ConfigError",
    "GroupLevelError",
    "InputFileError",
    "ModelBundleError",
    "NotAvailableError",
    "ParticipantsTableError",
    "ProcessingError",
    "RankDeficientDesignError",
    "ReportFigureError",
    "StatsInputError",
    "UnknownAtlasError",
    "UsageError",
    "exit_code",
]


class BrainageError(Exception):
    """Base class of every error raised on purpose by brainage."""


class UsageError(BrainageError):
    """The command line, the configuration or the BIDS input cannot be used as given (exit code 2)."""


class ConfigError(UsageError):
    """A pipeline configuration file is unreadable or invalid."""


class BIDSError(UsageError):
    """The input dataset is not a usable BIDS dataset."""


class ParticipantsTableError(BIDSError):
    """``participants.tsv`` is missing required values or is malformed."""


class NotAvailableError(UsageError):
    """A level, stage or option that this version of brainage does not provide yet."""


class InputFileError(BrainageError):
    """A participant's input file is corrupt or unusable.

    Raised inside a participant task; the task runner records it for that
    participant and carries on with the others.
    """

    def __init__(self, path, problem: str, fix: str):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. {fix}")


class ProcessingError(BrainageError):
    """A processing step failed for one participant (QC threshold, convergence …)."""


class AnatOutputsMissingError(BrainageError):
    """The structural stage's outputs for a participant are not there."""


class AtlasError(BrainageError):
    """An atlas registry entry or the file it points to is unusable."""


class UnknownAtlasError(UsageError, KeyError):
    """An atlas id that the registry does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModelBundleError(InputFileError):
    """A model bundle is unreadable, tampered with, or from an incompatible version (exit code 3)."""


class StatsInputError(BrainageError, ValueError):
    """Arrays or tables handed to :mod:`brainage.stats` cannot be used as given.

    NaN values, mismatched lengths, too few points, zero variance, an unknown
    site or batch, a missing column: the message names the argument, what was
    expected and what was found. It is also a :class:`ValueError`, as
    scikit-learn-style code expects of bad input.
    """


class RankDeficientDesignError(StatsInputError):
    """A model's design matrix is rank-deficient: a covariate is confounded with another term."""


class GroupLevelError(UsageError):
    """The cohort cannot be used at the group level as given.

    Too few participants for the folds, a single site where sites are
    required, missing ages, a cohort that does not match a bundle: the message
    says what was found and what to change (exit code 4).
    """


class ReportFigureError(BrainageError, ValueError):
    """The data handed to a report figure cannot be drawn.

    A missing column, a table without rows, a column that is all NaN: the
    message names the figure, the input and what is missing. The report
    assembler catches it and lists it in the report's errors section.
    """


# --------------------------------------------------------------------------- exit codes
EXIT_OK = 0
EXIT_PARTICIPANTS_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL_BUNDLE = 3
EXIT_GROUP_LEVEL = 4
EXIT_INPUT_DATA = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

#: Exit codes of the ``brainage`` command and what each means (``brainage --help``, docs/cli.md).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "all done",
    EXIT_PARTICIPANTS_FAILED: "some participants failed (the others are complete; details in "
    "OUTPUT_DIR/sub-<label>/log/)",
    EXIT_USAGE: "usage error: command line, configuration file or BIDS input (nothing was run)",
    EXIT_MODEL_BUNDLE: "the model bundle given with --model is unreadable or incompatible",
    EXIT_GROUP_LEVEL: "the cohort cannot be used at the group level (too few participants, "
    "missing derivatives, does not match the bundle)",
    EXIT_INPUT_DATA: "an input file or a processing step failed outside a participant task",
    EXIT_INTERNAL: "internal error (a bug): rerun with -v for the traceback and report it",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); completed participants are kept",
}

#: Error classes and their exit codes, most specific first (the first match wins).
_ERROR_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ModelBundleError, EXIT_MODEL_BUNDLE),
    (GroupLevelError, EXIT_GROUP_LEVEL),
    (StatsInputError, EXIT_GROUP_LEVEL),
    (UsageError, EXIT_USAGE),
    (BrainageError, EXIT_INPUT_DATA),
)


def exit_code(exc: BaseException) -> int:
    """Return the exit code of the command line for an exception that reached it.

    A generic :class:`UsageError` or :class:`BrainageError` raised while handling
    a more specific brainage error (``raise UsageError(str(exc))``) keeps the
    code of the error it re-raises.

    Parameters
    ----------
    exc : BaseException
        The exception that ended the command.

    Returns
    -------
    int
        A key of :data:`EXIT_CODES`.

    Examples
    --------
    >>> exit_code(ConfigError("x")), exit_code(GroupLevelError("x")), exit_code(RuntimeError())
    (2, 4, 70)
    """
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    while type(exc) in (UsageError, BrainageError) and isinstance(exc.__context__, BrainageError):
        exc = exc.__context__
    for cls, code in _ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL
