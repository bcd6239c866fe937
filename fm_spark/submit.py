"""``fm-spark-submit``: pyspark's ``spark-submit``, bound to the Python it was installed with.

pip's ``spark-submit`` launcher finds ``SPARK_HOME`` and the driver's Python by running whatever
``python3`` is first on ``PATH``; outside an activated virtualenv that Python has no pyspark (the
launcher then fails with ``/bin/spark-class: No such file or directory``) or no fm_spark. This
console script is installed by pip with this environment's interpreter in its shebang, so it
needs no activation: it sets ``SPARK_HOME`` (the pip-installed Spark, unless set),
``PYSPARK_PYTHON`` and ``PYSPARK_DRIVER_PYTHON`` (this interpreter, unless set), puts this
environment's ``bin/`` first on ``PATH``, points Spark's JVM logging at WARN from its start
(``fm_spark/log4j2.properties``, unless a log4j configuration is given in ``SPARK_SUBMIT_OPTS``),
and execs ``$SPARK_HOME/bin/spark-submit`` with the arguments unchanged. ``make setup`` also
makes the venv's ``spark-submit`` this launcher, so ``.venv/bin/spark-submit jobs/featurize.py``
works as typed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from pathlib import Path

__all__ = ["LOG4J_CONFIG", "main", "submit_env"]

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


def submit_env(environ: Mapping[str, str], python: str = sys.executable) -> dict[str, str]:
    """The environment ``spark-submit`` runs in: the caller's, plus what binds it to ``python``."""
    env = dict(environ)
    if not env.get("SPARK_HOME"):
        spec = find_spec("pyspark")
        if spec is None or spec.origin is None:
            raise SystemExit(f"fm-spark-submit: pyspark is not installed for {python}")
        env["SPARK_HOME"] = str(Path(spec.origin).parent)
    env.setdefault("PYSPARK_PYTHON", python)
    env.setdefault("PYSPARK_DRIVER_PYTHON", env["PYSPARK_PYTHON"])
    bin_dir = str(Path(python).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep)
                                               if p and p != bin_dir]])  # fmt: skip
    opts = env.get("SPARK_SUBMIT_OPTS", "")
    if "log4j" not in opts:
        env["SPARK_SUBMIT_OPTS"] = f"{opts} -Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}"
    return env


def main(argv: Sequence[str] | None = None) -> None:
    """Replace this process with ``$SPARK_HOME/bin/spark-submit ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = submit_env(os.environ)
    launcher = Path(env["SPARK_HOME"]) / "bin" / "spark-submit"
    if not launcher.is_file():
        raise SystemExit(f"fm-spark-submit: no {launcher} (SPARK_HOME={env['SPARK_HOME']})")
    os.execve(launcher, [str(launcher), *args], env)


if __name__ == "__main__":  # pragma: no cover
    main()
