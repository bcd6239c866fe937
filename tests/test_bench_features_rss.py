"""The feature bench's memory table reads each process's own mark: the Python driver is the
process it started, the JVM is the SparkSubmit JVM, and the JVM's forks count as neither."""

from dataclasses import dataclass, field

from fm_spark.bench.features import _role

JAVA = "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"


@dataclass
class _Proc:
    pid: int
    comm: str
    cmd: list[str] = field(default_factory=list)

    def name(self) -> str:
        return self.comm

    def cmdline(self) -> list[str]:
        return self.cmd


def test_roles_of_a_featurize_process_tree():
    submit = [JAVA, "-cp", "x", "org.apache.spark.deploy.SparkSubmit", "pyspark-shell"]
    launcher = [
        "java",
        "-Xmx128m",
        "org.apache.spark.launcher.Main",
        "org.apache.spark.deploy.SparkSubmit",
    ]
    assert _role(_Proc(10, "fm-spark", ["python", "fm-spark"]), root=10) == "driver"
    assert _role(_Proc(11, "java", submit), root=10) == "jvm"
    assert _role(_Proc(12, "java", launcher), root=10) == "other"
    assert _role(_Proc(11, "bash", ["bash", "spark-class", *submit[3:]]), root=10) == "other"
    # A fork of the JVM (Hadoop's shell commands) carries its cmdline and the thread's name.
    assert _role(_Proc(13, "Executor task l", submit), root=10) == "other"
    assert _role(_Proc(14, "chmod", ["chmod", "644", "f"]), root=10) == "other"
