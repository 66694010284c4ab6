"""Shared fixtures: one SparkSession for the whole test session (starting one takes ~5 s)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

TESTS_DIR = Path(__file__).resolve().parent
DATA_DIR = TESTS_DIR / "data"
# Spark settings of every test JVM (also the writer processes of test_writers): see `config` below.
TEST_JVM_SETTINGS = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}


@pytest.fixture(scope="session")
def config():
    from leukspark.config import load_config

    # Tests are small: few shuffle partitions keep the 2-core machine busy, not queued.
    # The test JVM runs many short queries: the optimising (C2) JIT compiler and the parallel garbage
    # collector's threads then compete with the work for the 2 cores without paying off; C1 only and
    # the serial collector made a Golub pipeline run ~40 % faster (158 s -> 84-91 s, load ~10).
    return load_config(overrides={"spark.shuffle_partitions": 4, "spark.driver_memory": "4g",
                                  "spark.extra": dict(TEST_JVM_SETTINGS)})


@pytest.fixture(scope="session")
def spark(config):
    from leukspark.spark import build_session

    session = build_session(config, app_name="leukspark-tests")
    yield session
    session.stop()


@pytest.fixture
def lake(spark, config, tmp_path):
    from leukspark.lake import Lake

    return Lake.from_config(spark, tmp_path / "lake", config)


@pytest.fixture(scope="session")
def geo_data_dir() -> Path:
    return DATA_DIR / "geo"


# -- running the suite on several workers (pytest-xdist, `--dist loadfile`; scripts/test.sh) ----------
#: Modules started first, longest first. Each module runs whole on one worker (its module fixtures
#: are built once); a worker that picked up a 4-minute module near the end of the queue left the
#: other worker idle until it finished (measured in a fresh clone, 2 cores; README).
LONGEST_FIRST = ("test_cluster.py", "test_writers.py", "test_rerun.py", "test_notebook.py",
                 "test_pipeline.py", "test_cohorts.py", "test_mlflow.py", "test_real_cohorts.py")


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # one process (TEST_WORKERS=0, or a single test file)
        return

    def rank(item) -> int:
        name = Path(str(item.fspath)).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a module is kept
