"""spark-submit entry point: ``spark-submit jobs/featurize.py --config C --input I --output O``.

Everything real lives in :mod:`fm_spark.features`; this file only forwards the arguments.
"""

import sys

from fm_spark.cli import main

if __name__ == "__main__":
    main(["featurize", *sys.argv[1:]])
