"""HR ETL: raw HR exports (IBM attrition CSV format) -> the attrition features, as Parquet on S3."""
