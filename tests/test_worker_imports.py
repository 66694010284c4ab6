"""PySpark workers skip re-reading unchanged zip archives before each task (leukspark.worker_imports)."""

from __future__ import annotations

import importlib
import os
import zipfile
import zipimport

import pytest

from leukspark import worker_imports


@pytest.fixture
def installed():
    assert worker_imports.install()
    yield
    worker_imports.uninstall()


def write_zip(path, modules: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, source in modules.items():
            archive.writestr(f"{name}.py", source)


def test_an_unchanged_archive_is_not_read_again_and_a_changed_one_is(tmp_path, installed, monkeypatch):
    path = tmp_path / "code.zip"
    write_zip(path, {"alpha": "X = 1\n"})
    importer = zipimport.zipimporter(str(path))
    reads = []
    original = zipimport._read_directory
    monkeypatch.setattr(zipimport, "_read_directory", lambda archive: reads.append(archive) or original(archive))

    importer.invalidate_caches()  # first call: read
    importer.invalidate_caches()  # unchanged: skipped
    assert reads == [str(path)]

    write_zip(path, {"alpha": "X = 1\n", "beta_module": "Y = 2\n"})
    stamp = os.stat(path)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))  # a later mtime, whatever the clock
    importer.invalidate_caches()
    assert reads == [str(path), str(path)]
    assert importer.find_spec("beta_module") is not None  # the new module is seen


def test_installed_only_in_a_spark_worker_and_not_when_told_eager(monkeypatch):
    monkeypatch.delenv(worker_imports.WORKER_MARKER, raising=False)
    assert worker_imports.install_in_spark_worker() is False
    monkeypatch.setenv(worker_imports.WORKER_MARKER, "secret")
    monkeypatch.setenv(worker_imports.SWITCH, "eager")
    assert worker_imports.install_in_spark_worker() is False
    monkeypatch.delenv(worker_imports.SWITCH)
    try:
        assert worker_imports.install_in_spark_worker() is True
        assert worker_imports.install_in_spark_worker() is False  # once
    finally:
        worker_imports.uninstall()
    assert not getattr(zipimport.zipimporter.invalidate_caches, "_leukspark_skips_unchanged", False)


def test_spark_workers_that_import_leukspark_skip_unchanged_archives(spark):
    def state(_):
        import zipimport as zi

        import leukspark  # noqa: F401  (installs the skip in this worker)

        importlib.invalidate_caches()
        yield getattr(zi.zipimporter.invalidate_caches, "_leukspark_skips_unchanged", False)

    assert spark.sparkContext.parallelize(range(2), 2).mapPartitions(state).collect() == [True, True]
    # ... and the driver keeps Python's own behaviour.
    assert not getattr(zipimport.zipimporter.invalidate_caches, "_leukspark_skips_unchanged", False)
