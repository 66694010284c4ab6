"""Reading GEO (Gene Expression Omnibus) files: SOFT, series matrix, platform annotations.

``iter_geo_records`` streams any SOFT or series-matrix file (plain or gzipped);
``read_platform_annotation`` maps probes to gene symbols; ``fetch_series``
downloads a series' family SOFT into a cache folder.
"""

from leukspark.geo.annotation import (
    ANNOTATION_SCHEMA,
    annotation_from_platform_table,
    read_platform_annotation,
)
from leukspark.geo.download import ACCESSION_PATTERN, cached_series_path, fetch_series
from leukspark.geo.soft import (
    MISSING_VALUE_TOKENS,
    PlatformRecord,
    SampleRecord,
    SampleTable,
    SeriesRecord,
    detect_format,
    iter_geo_records,
    parse_characteristics,
)

__all__ = [
    "ACCESSION_PATTERN",
    "ANNOTATION_SCHEMA",
    "MISSING_VALUE_TOKENS",
    "PlatformRecord",
    "SampleRecord",
    "SampleTable",
    "SeriesRecord",
    "annotation_from_platform_table",
    "cached_series_path",
    "detect_format",
    "fetch_series",
    "iter_geo_records",
    "parse_characteristics",
    "read_platform_annotation",
]
