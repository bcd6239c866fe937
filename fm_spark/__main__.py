"""``python -m fm_spark`` is the same as the ``fm-spark`` console script."""

from fm_spark.cli import main

main()
