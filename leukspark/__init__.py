"""leukspark: a Spark pipeline that tells ALL from AML in microarray gene expression."""

__version__ = "0.1.0"

POSITIVE_CLASS = "AML"
NEGATIVE_CLASS = "ALL"
