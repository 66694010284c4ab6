"""Typed errors raised where bad data or bad settings enter leukspark.

Every error carries a message that names the file, sample, line or key at fault, so
the CLI can print it without a traceback.
"""


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


class RunDiscardedError(TableError):
    """A run's rows were discarded (or its run row taken over) by another writer before it finished."""


class FeaturesReplacedError(TableError):
    """The stored gene features are not the build this run made or expects (another run rebuilt
    them, or a build stopped half-way): the run stops instead of training on them."""
