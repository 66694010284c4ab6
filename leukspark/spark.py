"""The one SparkSession builder used by jobs, the CLI and the tests."""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def build_session(config: dict, *, app_name: str | None = None) -> SparkSession:
    """Start (or join) a SparkSession configured from the `spark` and `lake` sections.

    Under spark-submit the cluster manager has already chosen the master, so the configured
    local master applies only when Python starts Spark itself (development, tests, the CLI).
    """
    # Python workers must run this interpreter (the one with leukspark's dependencies),
    # not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    spark_conf = config["spark"]
    builder = SparkSession.builder.appName(app_name or spark_conf["app_name"])
    if not _launched_by_spark_submit():
        if spark_conf["master"].startswith("local"):
            # Local mode needs no network interface: binding to loopback avoids the hostname warnings.
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.master(spark_conf["master"]).config("spark.driver.memory", spark_conf["driver_memory"])
    settings = {
        "spark.sql.shuffle.partitions": str(spark_conf["shuffle_partitions"]),
        "spark.ui.enabled": str(spark_conf["ui"]).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # delta-rs reads the Parquet files Spark writes; INT96 timestamps are legacy there.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.session.timeZone": "UTC",
        "spark.python.worker.reuse": "true",
    }
    if config["lake"]["engine"] == "delta-spark":
        settings["spark.sql.extensions"] = DELTA_EXTENSION
        settings["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    settings.update({str(k): str(v) for k, v in spark_conf["extra"].items()})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(spark_conf["log_level"])
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return spark


def jvm_has_delta(spark: SparkSession) -> bool:
    """True when the JVM can load delta-spark (the cluster was started with its package)."""
    try:
        spark._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")  # noqa: SLF001
        return True
    except Exception:  # py4j raises a generic Py4JJavaError for ClassNotFoundException
        return False


def _launched_by_spark_submit() -> bool:
    # spark-submit starts the Python driver with the gateway already running.
    return "PYSPARK_GATEWAY_PORT" in os.environ or os.environ.get("SPARK_SUBMIT_LAUNCHED") == "1"
