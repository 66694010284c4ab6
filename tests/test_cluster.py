"""The pipeline on a real Spark standalone cluster, submitted the way a cluster user submits it.

A module fixture starts a standalone master and two workers (1 core, 2 GB each) on this
machine with the classes that ship with pyspark, on loopback ports only. The test then
builds the --py-files zip and, from a folder outside the repository (no PYTHONPATH to it),
submits to the cluster a probe application and then `jobs/run_pipeline.py`, checking that

* every executor (one on each worker) imports leukspark, training code included, from the
  zip it was shipped, not from the editable install of this repository that the interpreter
  also has on its path (the probe);
* the pipeline exits 0 and ran on the cluster: the master lists it as FINISHED and each
  worker ran an executor of it;
* its tables equal those of the same pipeline run in local mode in this process (while the
  cluster works): labels, gene features, splits, and every prediction and metric of every
  (model, fold), run ids and fit times aside.

The cluster is stopped when the module ends, a failed test included: the process groups are
terminated, killed after a timeout, and no process of the cluster may be left over.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
JOB = REPO / "jobs" / "run_pipeline.py"

N_SAMPLES, N_PROBES, SEED = 60, 300, 4
MODELS = ["logistic_regression", "random_forest"]
FAST_PARAMS = {  # as in tests/test_pipeline.py
    "random_forest": {"n_estimators": 40},
    "xgboost": {"n_estimators": 40},
    "dnn": {"hidden_layers": [32], "max_epochs": 15, "patience": 4},
}
N_WORKERS = 2
START_TIMEOUT_S = 90
SUBMIT_TIMEOUT_S = 240
STOP_TIMEOUT_S = 20


# -- the cluster ---------------------------------------------------------------------------
def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so that they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _get_json(url: str, timeout: float = 5.0):
    # Loopback only: no proxy from the environment applies.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"({path} unreadable)"


def _clean_env(base: Path) -> dict:
    """The environment for every cluster process: no gateway of this process, no repo on the path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_GATEWAY", "SPARK_", "_PYSPARK"))
           and k not in {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME"}}
    conf_dir = base / "conf"  # empty: no spark-defaults.conf or spark-env.sh from elsewhere
    local_dir = base / "local"
    conf_dir.mkdir(exist_ok=True)
    local_dir.mkdir(exist_ok=True)
    env.update({
        "SPARK_HOME": str(_spark_home()),
        "SPARK_CONF_DIR": str(conf_dir),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_DIRS": str(local_dir),
        "SPARK_LOG_DIR": str(base / "logs"),
        "SPARK_DAEMON_MEMORY": "512m",
        "PYSPARK_PYTHON": PYTHON,
        "PYSPARK_DRIVER_PYTHON": PYTHON,
    })
    return env


class StandaloneCluster:
    """A master and N workers, each started in its own process group."""

    def __init__(self, base: Path, n_workers: int = N_WORKERS):
        self.base = base
        self.n_workers = n_workers
        self.port, self.webui_port, *self.worker_ui_ports = _free_ports(2 + n_workers)
        self.url = f"spark://127.0.0.1:{self.port}"
        self.webui = f"http://127.0.0.1:{self.webui_port}"
        self.worker_dirs = [base / f"worker-{i}" for i in range(n_workers)]
        self.logs: list[Path] = []
        self.processes: list[subprocess.Popen] = []
        self.pgids: set[int] = set()
        self.env = _clean_env(base)
        self.env["SPARK_MASTER_OPTS"] = "-Dspark.master.rest.enabled=false"
        (base / "logs").mkdir(exist_ok=True)
        self._stopped = False
        self._ready = False

    def _spawn(self, name: str, args: list[str], extra_env: dict | None = None) -> subprocess.Popen:
        log = self.base / "logs" / f"{name}.log"
        self.logs.append(log)
        spark_class = _spark_home() / "bin" / "spark-class"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(spark_class), *args], cwd=self.base, env={**self.env, **(extra_env or {})},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        self.pgids.add(process.pid)  # start_new_session: the process leads its own group
        return process

    def start(self) -> None:
        """Launch the master and the workers (which retry until the master is up); see wait_ready."""
        self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(self.port), "--webui-port", str(self.webui_port)])
        for i, (work_dir, ui_port) in enumerate(zip(self.worker_dirs, self.worker_ui_ports)):
            work_dir.mkdir()
            self._spawn(f"worker-{i}", [
                "org.apache.spark.deploy.worker.Worker", self.url, "--cores", "1", "--memory", "2g",
                "--host", "127.0.0.1", "--webui-port", str(ui_port), "--work-dir", str(work_dir)],
                extra_env={"SPARK_WORKER_DIR": str(work_dir)})

    def wait_ready(self) -> None:
        """Until the master's JSON lists every worker as ALIVE (the JVMs boot while the test sets up)."""
        if not self._ready:
            self._wait(lambda state: state is not None and self.alive_workers(state) == self.n_workers,
                       f"{self.n_workers} ALIVE workers")
            self._ready = True

    def state(self) -> dict | None:
        try:
            return _get_json(f"{self.webui}/json/")
        except (OSError, ValueError):
            return None

    @staticmethod
    def alive_workers(state: dict) -> int:
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for process, log in zip(self.processes, self.logs):
                if process.poll() is not None:
                    raise RuntimeError(f"{log.stem} exited with {process.returncode} while waiting for "
                                       f"{what}:\n{_tail(log)}")
            if ready(self.state()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"no {what} after {START_TIMEOUT_S} s; master state: {self.state()}\n"
                           + "\n".join(f"--- {log.name}\n{_tail(log, 1500)}" for log in self.logs))

    def completed_apps(self) -> dict[str, dict]:
        state = self.state() or {}
        return {app["id"]: app for app in state.get("completedapps", [])}

    # -- stopping ------------------------------------------------------------------------
    def stop(self) -> None:
        """Terminate every process group (workers first: they stop their executors), kill what is left."""
        if self._stopped:
            return
        self._stopped = True
        for process in reversed(self.processes):
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pgid in self.pgids:
            _signal_group(pgid, signal.SIGKILL)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for p in self.leftovers():  # e.g. an executor that left its group
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(self.leftovers(), timeout=10)

    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this cluster: in its process groups, or running in or from its folder."""
        base = str(self.base)
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                mine = os.getpgid(p.pid) in self.pgids
                if not mine:
                    mine = any(base in arg for arg in (p.info["cmdline"] or []))
                if not mine:
                    mine = p.cwd().startswith(base)
            except (psutil.Error, OSError):
                continue
            if mine:
                found.append(p)
        return found


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A standalone master and two workers; the JVMs boot while the test sets up (see wait_ready).

    Stopped at the end of the module, whatever the tests did; then no process of it may be left.
    """
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java: a standalone cluster cannot start")
    cluster = StandaloneCluster(tmp_path_factory.mktemp("cluster"))
    atexit.register(cluster.stop)  # also when the interpreter ends without the finalizer
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)
        left = [_describe(p) for p in cluster.leftovers() if _alive(p)]
        assert not left, f"processes of the test cluster are still running: {left}"


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid}: {' '.join(p.cmdline())[:300]}"
    except psutil.Error:
        return f"{p.pid}: (gone)"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- submitting ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pyfiles_zip(tmp_path_factory) -> Path:
    from leukspark.packaging import build_pyfiles

    return build_pyfiles(tmp_path_factory.mktemp("dist"))


class SparkSubmit:
    """`spark-submit` in client mode against the cluster, running in its own process group.

    Started on construction; `result()` waits for it (killing the group past the timeout),
    `kill()` ends whatever of it is left (the driver JVM and its Python process).
    """

    def __init__(self, cluster: StandaloneCluster, script: Path, args: list[str], *, cwd: Path, py_files: Path,
                 files: list[Path] = (), conf: dict[str, str] | None = None):
        cluster.wait_ready()
        settings = {
            "spark.executor.memory": "1g",
            "spark.executor.cores": "1",
            "spark.pyspark.python": PYTHON,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            # Schedule only once both executors are up, so that the work spreads over both workers.
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",
            "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
            **(conf or {}),
        }
        self.command = [
            str(_spark_home() / "bin" / "spark-submit"),
            "--master", cluster.url,
            "--driver-memory", "1g",
            "--py-files", str(py_files),
            *(["--files", ",".join(str(f) for f in files)] if files else []),
            *[arg for key, value in settings.items() for arg in ("--conf", f"{key}={value}")],
            str(script), *args,
        ]
        self.out = (cwd / f"{script.stem}.stdout").open("w+")
        self.err = (cwd / f"{script.stem}.stderr").open("w+")
        self.process = subprocess.Popen(self.command, cwd=cwd, env=_clean_env(cwd), stdin=subprocess.DEVNULL,
                                        stdout=self.out, stderr=self.err, text=True, start_new_session=True)

    def result(self, timeout: float = SUBMIT_TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"spark-submit ran over {timeout} s\n{self._read(self.out)[-3000:]}\n"
                        f"{self._read(self.err)[-6000:]}")
        finally:
            self.kill()  # nothing of the driver may outlive it
        return subprocess.CompletedProcess(self.command, self.process.returncode, self._read(self.out),
                                           self._read(self.err))

    def kill(self) -> None:
        _signal_group(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    @staticmethod
    def _read(handle) -> str:
        handle.flush()
        handle.seek(0)
        return handle.read()


PROBE_JOB = '''\
"""Where do the executors import leukspark from? Prints one PROBE line of JSON."""
import json
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("leukspark-zip-probe").getOrCreate()


def where(_):
    import os
    import time
    import leukspark
    import leukspark.stages.train
    time.sleep(0.5)  # keep the core busy: the next task goes to the other executor
    yield os.getcwd(), (leukspark.__file__, leukspark.stages.train.__file__)


rows = spark.sparkContext.parallelize(range(8), 8).mapPartitions(where).collect()
print("PROBE " + json.dumps({"master": spark.sparkContext.master, "executors": sorted(set(rows))}))
spark.stop()
'''


class ClusterJobs:
    """spark-submit runs started from a helper thread, which the test can end all at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._aborted = False
        self._running: list[SparkSubmit] = []

    def submit(self, *args, **kwargs) -> "SparkSubmit":
        with self._lock:
            if self._aborted:
                pytest.fail("the test ended before this spark-submit started")
            job = SparkSubmit(*args, **kwargs)
            self._running.append(job)
            return job

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            for job in self._running:
                job.kill()


def _executor_logs(cluster: StandaloneCluster, app_id: str | None = None) -> str:
    pattern = f"{app_id}/*/stderr" if app_id else "*/*/stderr"
    return "\n".join(f"--- {log}\n{_tail(log, 2500)}" for d in cluster.worker_dirs for log in sorted(d.glob(pattern)))


def _workers_that_ran(cluster: StandaloneCluster, app_id: str) -> list[int]:
    return [i for i, d in enumerate(cluster.worker_dirs) if any((d / app_id).glob("*/stderr"))]


class Phases:
    """Wall time of the test's phases, printed (shown with -s, or with a failure's captured output)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - began
            print(f"{name}: {self.seconds[name]:.1f} s", flush=True)


# -- tests -----------------------------------------------------------------------------------
def test_the_pyfiles_zip_is_self_contained(pyfiles_zip, tmp_path):
    """The zip has the modules and package data (not the demo), and works on its own."""
    from leukspark import __version__

    assert pyfiles_zip.name == f"leukspark-{__version__}.zip"
    with zipfile.ZipFile(pyfiles_zip) as archive:
        names = set(archive.namelist())
        shipped_default = archive.read("leukspark/conf/default.yaml")
    assert {"leukspark/__init__.py", "leukspark/cli.py", "leukspark/stages/train.py", "leukspark/models/dnn.py",
            "leukspark/conf/default.yaml", "leukspark/conf/cluster.yaml", "leukspark/data/GSE13159.info",
            "leukspark/data/GPL570_annot.csv"} <= names
    assert not [n for n in names if "/demo/" in n or "__pycache__" in n or n.endswith(".pyc")]
    assert shipped_default == (REPO / "conf" / "default.yaml").read_bytes()  # the symlink, resolved

    # Imported from the zip alone (run outside the repository, nothing of it on the path), the
    # package must still find its configuration and its reference data.
    check = (
        "import json, leukspark\n"
        "from leukspark.config import load_config\n"
        "from leukspark.reference import load_mile_samples\n"
        "config = load_config('leukspark-cluster.yaml')\n"
        "print(json.dumps({'file': leukspark.__file__, 'engine': config['lake']['engine'],\n"
        "                  'mile_samples': len(load_mile_samples())}))\n"
    )
    with zipfile.ZipFile(pyfiles_zip) as archive:
        (tmp_path / "leukspark-cluster.yaml").write_bytes(archive.read("leukspark/conf/cluster.yaml"))
    env = {**_clean_env(tmp_path), "PYTHONPATH": str(pyfiles_zip)}
    result = subprocess.run([PYTHON, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, (
        "leukspark imported from the --py-files zip cannot read its package data (under spark-submit the "
        "driver imports it from the zip too): read conf/default.yaml and data/* with importlib.resources, "
        f"not through Path(__file__)\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["file"].startswith(str(pyfiles_zip) + os.sep)
    assert report["engine"] == "auto"
    assert report["mile_samples"] == 2096


def test_pipeline_on_a_standalone_cluster_equals_local_mode(cluster, pyfiles_zip, spark, tmp_path):
    from leukspark.bundle import load_bundle
    from leukspark.config import load_config
    from leukspark.lake import Lake
    from leukspark.pipeline import Pipeline
    from leukspark.synth import write_synthetic_series

    phases = Phases()
    series = write_synthetic_series(tmp_path / "series", n_samples=N_SAMPLES, n_probes=N_PROBES, seed=SEED)
    config_file = tmp_path / "leukspark-test.yaml"
    config_file.write_text(yaml.safe_dump({
        "spark": {"driver_memory": "1g", "shuffle_partitions": 4},
        "training": {"models": MODELS, "params": FAST_PARAMS},
    }))
    work = tmp_path / "submit"  # the driver's working folder: not the repository
    work.mkdir()
    assert not work.is_relative_to(REPO)
    cluster_lake = tmp_path / "lake-cluster"
    before = set(cluster.completed_apps())

    # 1. On the cluster, one after the other: a probe application that reports where the executors
    #    import leukspark from, then the pipeline. Meanwhile, the same pipeline in local mode here.
    probe_script = work / "probe_job.py"
    probe_script.write_text(PROBE_JOB)
    on_cluster = ClusterJobs()

    def submit_both():
        with phases("probe job on the cluster"):
            probe = on_cluster.submit(cluster, probe_script, [], cwd=work, py_files=pyfiles_zip).result()
        apps_of_probe = set(cluster.completed_apps()) - before
        with phases("pipeline on the cluster"):
            run = on_cluster.submit(cluster, JOB, ["--input", str(series.family_soft), "--lake", str(cluster_lake),
                                                   "--config", str(config_file), "--no-report"],
                                    cwd=work, py_files=pyfiles_zip, files=[config_file]).result()
        return probe, apps_of_probe, run

    config = load_config(config_file)
    local_lake = Lake.from_config(spark, tmp_path / "lake-local", config)
    with ThreadPoolExecutor(max_workers=1) as pool:
        cluster_work = pool.submit(submit_both)
        try:
            with phases("pipeline in local mode"):
                Pipeline(spark, local_lake, config, echo=lambda _: None).run([str(series.family_soft)])
            probe, apps_of_probe, result = cluster_work.result(timeout=2 * SUBMIT_TIMEOUT_S + 60)
        finally:
            on_cluster.abort()  # a failure here ends the submissions too

    # 2. The probe: every executor, one on each worker, imported leukspark and its training code
    #    from the zip it was shipped, not from the editable install of this repository that the
    #    interpreter also has on its path.
    assert probe.returncode == 0, f"probe job failed:\n{probe.stderr[-6000:]}\n{_executor_logs(cluster)}"
    report = json.loads(next(x for x in probe.stdout.splitlines() if x.startswith("PROBE ")).removeprefix("PROBE "))
    assert report["master"] == cluster.url
    assert [cluster.completed_apps()[a]["name"] for a in apps_of_probe] == ["leukspark-zip-probe"]
    used_workers = set()
    for cwd, module_files in report["executors"]:
        shipped = Path(cwd) / pyfiles_zip.name
        for module_file in module_files:
            assert Path(os.path.normpath(os.path.join(cwd, module_file))).is_relative_to(shipped), report
        used_workers |= {i for i, d in enumerate(cluster.worker_dirs) if Path(cwd).is_relative_to(d)}
    assert used_workers == set(range(N_WORKERS)), report

    # 3. The pipeline exited 0, and it ran on the cluster: the master lists it as finished, and
    #    each worker ran an executor of it, into which the zip was fetched.
    assert result.returncode == 0, (f"spark-submit run_pipeline.py exited {result.returncode}\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-8000:]}\n{_executor_logs(cluster)}")
    assert "best model" in result.stdout
    new_apps = {k: v for k, v in cluster.completed_apps().items() if k not in before | apps_of_probe}
    assert len(new_apps) == 1, new_apps
    (app_id, app), = new_apps.items()
    assert app["state"] == "FINISHED", app
    assert app["name"] == config["spark"]["app_name"], app
    assert _workers_that_ran(cluster, app_id) == list(range(N_WORKERS)), _executor_logs(cluster, app_id)
    for worker_dir in cluster.worker_dirs:
        for executor_dir in (p for p in (worker_dir / app_id).iterdir() if p.is_dir()):
            assert (executor_dir / pyfiles_zip.name).is_file(), f"no zip fetched into {executor_dir}"

    # 4. Same tables as in local mode.
    remote_lake = Lake.from_config(spark, cluster_lake, config)
    assert remote_lake.engine == local_lake.engine == "delta-rs"

    def table(lake: Lake, name: str, keys: list[str]) -> pd.DataFrame:
        return lake.read(name).toPandas().sort_values(keys).reset_index(drop=True)

    for name, keys in (("labels", ["sample"]), ("excluded_samples", ["sample"]), ("genes", ["position"]),
                       ("splits", ["sample"])):
        pd.testing.assert_frame_equal(table(remote_lake, name, keys), table(local_lake, name, keys), obj=name)

    remote_features, local_features = (table(lake, "gene_features", ["sample"]) for lake in (remote_lake, local_lake))
    assert list(remote_features["sample"]) == list(local_features["sample"])
    np.testing.assert_allclose(np.vstack(remote_features["features"].to_numpy()),
                               np.vstack(local_features["features"].to_numpy()), rtol=1e-12, equal_nan=True)

    keys = ["model", "fold", "sample"]
    remote_predictions, local_predictions = (table(lake, "predictions", keys).drop(columns="run")
                                             for lake in (remote_lake, local_lake))
    assert set(remote_predictions["model"]) == set(MODELS)
    timing_columns = [c for c in remote_predictions.columns if c.endswith("_seconds")]  # wall clock: differs
    pd.testing.assert_frame_equal(remote_predictions.drop(columns=["probability_AML", *timing_columns]),
                                  local_predictions.drop(columns=["probability_AML", *timing_columns]),
                                  obj="predictions")
    np.testing.assert_allclose(remote_predictions["probability_AML"], local_predictions["probability_AML"],
                               rtol=0, atol=1e-9)

    keys = ["model", "fold", "metric"]
    remote_results, local_results = (
        table(lake, "results", keys).query("metric != 'fit_seconds'").reset_index(drop=True)
        for lake in (remote_lake, local_lake))
    for column in ("model", "fold", "metric", "params", "config_hash", "code_version"):
        assert list(remote_results[column]) == list(local_results[column]), column
    np.testing.assert_allclose(remote_results["value"], local_results["value"], rtol=0, atol=1e-9, equal_nan=True)

    remote_run, local_run = (lake.read("runs").toPandas() for lake in (remote_lake, local_lake))
    assert len(remote_run) == len(local_run) == 1
    for column in ("status", "config_hash", "data_fingerprint", "n_train", "n_test", "n_genes", "best_model"):
        assert remote_run.loc[0, column] == local_run.loc[0, column], column

    # The executors wrote each model's bundle where the driver reads it (one filesystem here).
    from leukspark.lake import resolve_stored_path

    assert not Path(remote_run.loc[0, "bundle_dir"]).is_absolute()  # the lake can be moved
    bundle_dir = resolve_stored_path(cluster_lake, remote_run.loc[0, "bundle_dir"], in_lake="-")
    assert bundle_dir.is_relative_to(cluster_lake.resolve())
    genes = list(table(remote_lake, "genes", ["position"])["gene"])
    for model in MODELS:
        assert load_bundle(bundle_dir / model).gene_order == genes
