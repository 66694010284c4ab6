"""Typed errors raised where bad data or bad settings enter leukspark.

Every error carries a message that names the file, sample, line or key at fault, so
the CLI can print it without a traceback.
"""

import errno
import re


class LeukSparkError(Exception):
    """Base class: an error the user can act on; the CLI prints it without a traceback."""


class ConfigError(LeukSparkError):
    """A configuration file or value is invalid; the message names the key."""


class GeoFormatError(LeukSparkError):
    """A GEO file (SOFT, series matrix, annotation) is malformed; names file and sample or line."""


class GeoDownloadError(LeukSparkError):
    """A GEO accession could not be fetched (offline, unknown accession, bad accession format)."""


class InputError(LeukSparkError):
    """A user-supplied path or matrix file is missing or unreadable."""


class DuplicateSampleError(LeukSparkError):
    """A sample already stored in the lake arrives again with different values."""


class LabelError(LeukSparkError):
    """Labels could not be assigned or a label file is malformed."""


class FeatureError(LeukSparkError):
    """Gene features cannot be built (no usable probes, unknown strategy, missing genes)."""


class SplitError(LeukSparkError):
    """A train/test split cannot be built or a user-supplied split is inconsistent."""


class TableError(LeukSparkError):
    """A Delta table is missing, has the wrong schema, or a commit failed."""


class SchemaMismatchError(TableError):
    """A DataFrame written to a table does not have the table's schema."""


class ModelError(LeukSparkError):
    """A model is unknown, misconfigured, or failed to train."""


class BundleError(LeukSparkError):
    """A saved model bundle is missing, tampered with, or does not match its manifest."""


class PredictionError(LeukSparkError):
    """A sample cannot be scored (wrong platform, empty, too many genes missing)."""


class LakePathError(TableError):
    """A lake root that the Delta engine in use would open as another folder."""


class ConcurrentWriteError(TableError):
    """Another writer kept committing to the same table first, beyond the bounded retries."""


class StaleBaseError(TableError):
    """An append that depends on a table version (an incremental features build) found that another
    writer committed to the table after it read that version; nothing was committed."""


class RunDiscardedError(TableError):
    """A run's rows were discarded (or its run row taken over) by another writer before it finished."""


class StorageError(LeukSparkError):
    """The machine refused a file operation: a full disk, no permission, a read-only mount, an I/O error."""


# What an operating-system error number means for someone running leukspark, by errno.
_OS_ERROR_MEANING = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENOENT: "no such file or folder",
    errno.EIO: "input/output error (a failing disk or network mount)",
}


def one_line(text: object) -> str:
    """A library's message on one line: delta-rs writes its causes on several, with colour codes."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", str(text)).replace("\u21b3", "")
    return "; ".join(" ".join(line.split()) for line in plain.splitlines() if line.strip())


def describe_os_error(error: OSError, doing: str | None = None) -> str:
    """One line for an operating-system error: what happened, and to which path."""
    meaning = _OS_ERROR_MEANING.get(error.errno, one_line(error.strerror or error) or type(error).__name__)
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    text = f"{where}: {meaning}" if where else meaning
    return f"{doing}: {text}" if doing else text


def storage_error(error: OSError, doing: str) -> StorageError:
    """A write that failed for the machine's reasons (disk full, no permission) as a StorageError."""
    return StorageError(describe_os_error(error, doing))


# A Python worker's OSError as Spark reports it: inside the task's traceback, in the driver's error.
_TASK_OS_ERROR = re.compile(r"\b(?:[A-Za-z]+Error): \[Errno (\d+)\] ([^\n]*?)(?:: '([^'\n]*)')?\s*$", re.MULTILINE)


def task_os_error(error: BaseException) -> str | None:
    """One line for an operating-system error that failed a Spark task (disk full, permission), or None."""
    found = _TASK_OS_ERROR.findall(str(error))
    if not found:
        return None
    number, text, path = found[-1]
    meaning = _OS_ERROR_MEANING.get(int(number), text)
    return f"a Spark task failed: {path}: {meaning}" if path else f"a Spark task failed: {meaning}"


class FeaturesReplacedError(TableError):
    """The stored gene features are not the build this run made or expects (another run rebuilt
    them, or a build stopped half-way): the run stops instead of training on them."""
