"""Domain exceptions.

Every message names the thing, what was expected, what was found, and what to
do about it. The command line turns :class:`UsageError` (and its subclasses)
into exit code 2 with a single line.
"""

from __future__ import annotations


class BrainageError(Exception):
    """Base class of every error raised on purpose by brainage."""


class UsageError(BrainageError):
    """The command line or its inputs cannot be used as given (exit code 2)."""


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


class ModelBundleError(InputFileError):
    """A model bundle is unreadable, tampered with, or from an incompatible version."""


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
    required, missing ages: the message says what was found and what to
    change (exit code 2).
    """


class ReportFigureError(BrainageError, ValueError):
    """The data handed to a report figure cannot be drawn.

    A missing column, a table without rows, a column that is all NaN: the
    message names the figure, the input and what is missing. The report
    assembler catches it and lists it in the report's errors section.
    """
