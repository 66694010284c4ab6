"""Cheaper Python tasks in PySpark workers: unchanged zip archives are not re-read before every task.

Before each task PySpark's worker calls ``importlib.invalidate_caches()``
(``pyspark.worker_util.setup_spark_files``), and since Python 3.10 ``zipimporter.invalidate_caches``
re-reads its archive's whole directory, in Python. A worker's ``sys.path`` holds spark-core's jar
(5,264 entries; Spark's ``PythonUtils.sparkPythonPath`` adds "our jar" for a pyspark bundled in it,
which pip's pyspark is not) and ``pyspark.zip`` (1,220 entries, read once per subpackage imported
from it). Together ~0.3 s of CPU per task, found with py-spy on tasks that do nothing, and paid by
every pandas UDF and mapInPandas task of a run (benchmarks/results/python_tasks.md).

:func:`install` makes a zipimporter skip the re-read while its archive's size and modification time
are those it last read; a changed archive (a --py-files zip replaced between tasks) is read again as
before. It runs when leukspark is imported inside a PySpark worker (``leukspark/__init__.py``), so
the first task of each worker process pays once. ``LEUKSPARK_ZIP_INVALIDATION=eager`` in the
workers' environment (``spark.executorEnv.LEUKSPARK_ZIP_INVALIDATION``) keeps Python's behaviour.
"""

from __future__ import annotations

import os
import zipimport

#: Set by Spark's PythonWorkerFactory for its daemon and the workers it forks.
WORKER_MARKER = "PYTHON_WORKER_FACTORY_SECRET"
SWITCH = "LEUKSPARK_ZIP_INVALIDATION"


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def install() -> bool:
    """Replace ``zipimporter.invalidate_caches`` by one that skips unchanged archives; True if it did."""
    original = getattr(zipimport.zipimporter, "invalidate_caches", None)
    if original is None or getattr(original, "_leukspark_skips_unchanged", False):
        return False
    read_at: dict[tuple[int, str], tuple[int, int]] = {}  # (id, archive) of a zipimporter -> stamp it last read

    def invalidate_caches(self) -> None:
        stamp = _stamp(self.archive)
        if stamp is not None and read_at.get((id(self), self.archive)) == stamp:
            return
        original(self)
        if stamp is not None:
            read_at[(id(self), self.archive)] = stamp

    invalidate_caches._leukspark_skips_unchanged = True
    invalidate_caches._original = original
    zipimport.zipimporter.invalidate_caches = invalidate_caches
    return True


def uninstall() -> None:
    """Python's own ``invalidate_caches`` again (tests)."""
    current = getattr(zipimport.zipimporter, "invalidate_caches", None)
    if getattr(current, "_leukspark_skips_unchanged", False):
        zipimport.zipimporter.invalidate_caches = current._original


def install_in_spark_worker() -> bool:
    """:func:`install`, only inside a PySpark worker and unless the workers' environment says eager."""
    if WORKER_MARKER not in os.environ or os.environ.get(SWITCH, "").lower() == "eager":
        return False
    return install()
