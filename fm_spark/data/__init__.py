"""Reading field-indexed Parquet into torch batches (Petastorm)."""
