"""spark-submit entry point: ``spark-submit jobs/train.py --config ... --data ... --model ffm``.

Under spark-submit, ``--workers N`` runs TorchDistributor on the cluster's executors.
"""

import sys

from fm_spark.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
