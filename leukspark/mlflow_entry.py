"""The MLflow "model from code" file of a leukspark pyfunc model (see `mlflow_model`).

MLflow copies this file into each logged model and runs it when the model is loaded: the model
is this class, built afresh, and its bundle comes from the model's artifacts. Nothing is
pickled. Importing it outside MLflow's loader only registers a model object with MLflow.
"""

from mlflow.models import set_model

from leukspark.mlflow_model import LeukSparkModel

set_model(LeukSparkModel())
