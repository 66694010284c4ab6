"""leukspark: distributed ALL vs AML classification from microarray expression on Spark."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version() -> str:
    for line in (HERE / "leukspark" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("no __version__ in leukspark/__init__.py")


setup(
    name="leukspark",
    version=read_version(),
    description="ALL vs AML classification from GEO microarray series on Apache Spark with Delta tables",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["leukspark", "leukspark.*"]),
    include_package_data=True,
    package_data={
        "leukspark": ["conf/*.yaml", "data/*", "data/demo/*", "report_template.html"],
    },
    install_requires=[
        "pyspark>=4.0,<4.1",
        "delta-spark>=4.0,<4.1",
        "deltalake>=1.2,<2",
        "pyarrow>=15",
        "pandas>=2.2,<3",
        "numpy>=1.26",
        "numba>=0.60",  # the k-TSP pair kernel (leukspark/pairs.py): compiled loops, no temporary tensors
        "scikit-learn>=1.4",
        "xgboost>=2.0",
        "torch==2.13.0",
        "GEOparse==2.0.4",
        "six",  # GEOparse 2.0.4 imports six without declaring it
        "isal>=1.6",  # gunzip 2.3x faster than zlib (GEO series are gzipped); zlib when it is absent
        "PyYAML>=6",
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.6", "psutil>=5.9", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29"],
        # MLflow tracking, pyfunc models and the registry (leukspark/tracking.py; tracking.mlflow, off by
        # default). The full `mlflow`, not the lighter `mlflow-skinny`: skinny has no SQL store (no sqlalchemy
        # or alembic), so no store inside the lake without a server (its one local store, the file store, is
        # refused by MLflow 3.x unless MLFLOW_ALLOW_FILE_STORE is set) and no registry there, and it has no
        # tracking server or UI (no Flask, no UI build) for `mlflow ui`. 3.17 is the version tested with
        # pyspark 4.0, pandas 2.3, numpy 2.4 and Python 3.11; it caps pyarrow below 26.
        "mlflow": ["mlflow>=3.17,<4"],
    },
    entry_points={"console_scripts": ["leukspark=leukspark.cli:main"]},
)
