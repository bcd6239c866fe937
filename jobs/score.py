"""spark-submit entry point: ``spark-submit jobs/score.py --model M --input I --output O``.

Everything real lives in :mod:`fm_spark.score`; this file only forwards the arguments.
"""

import sys

from fm_spark.cli import main

if __name__ == "__main__":
    main(["score", *sys.argv[1:]])
