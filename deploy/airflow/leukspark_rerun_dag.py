"""Airflow DAG: every night, ingest GEO series that are new and retrain when the data changed.

`jobs/rerun.py` is idempotent: a night with nothing new changes nothing, and a night that was
killed half-way is finished by the next one. Copy this file into the Airflow dags folder and
set the Airflow Variables below (or edit the defaults).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.models import Variable
from airflow.operators.bash import BashOperator

LEUKSPARK_HOME = Variable.get("leukspark_home", default_var="/opt/leukspark")
LAKE = Variable.get("leukspark_lake", default_var="/data/leukspark/lake")
MASTER = Variable.get("leukspark_spark_master", default_var="spark://spark-master:7077")
CONFIG = Variable.get("leukspark_config", default_var=f"{LEUKSPARK_HOME}/conf/cluster.yaml")

SPARK_SUBMIT = (
    f"cd {LEUKSPARK_HOME} && .venv/bin/spark-submit --master {MASTER} "
    f"--py-files dist/leukspark-*.zip --files {CONFIG} "
    f"--conf spark.pyspark.python={LEUKSPARK_HOME}/.venv/bin/python "
)

with DAG(
    dag_id="leukspark_rerun",
    description="Ingest new GEO series, re-derive labels and features, retrain on change",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two reruns on one lake at once would only contend for commits
    default_args={"retries": 2, "retry_delay": timedelta(minutes=15)},
    tags=["leukspark"],
) as dag:
    build = BashOperator(task_id="build_py_files", bash_command=f"cd {LEUKSPARK_HOME} && bash scripts/build_pyfiles.sh")
    rerun = BashOperator(
        task_id="rerun",
        bash_command=SPARK_SUBMIT + f"jobs/rerun.py --lake {LAKE} --config {CONFIG} --report {LAKE}/reports/latest",
    )
    build >> rerun
