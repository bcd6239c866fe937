"""Files through Hadoop's FileSystem API, and outputs that appear atomically.

Going through the JVM's ``FileSystem`` (not ``os``/``shutil``) makes ``hdfs://``, ``s3a://``
and local paths behave alike: the same code that Spark writes with also moves and deletes.

:class:`AtomicOutput` is the protocol behind "a finished dataset or nothing": everything is
built in a hidden sibling ``.<name>.staging-<run id>``, renamed into place, and ``_SUCCESS`` is
written last. A killed run leaves only a staging sibling, which the next run removes.
Concurrent runs writing the same output are not supported (the later one removes the earlier
one's staging directory).
"""

from __future__ import annotations

import uuid
from typing import Any

from pyspark.sql import SparkSession

__all__ = ["SUCCESS", "AtomicOutput", "HadoopFS", "OutputExistsError"]

SUCCESS = "_SUCCESS"


class OutputExistsError(FileExistsError):
    """The output already holds something and overwriting was not asked for."""


class HadoopFS:
    """A thin wrapper over ``org.apache.hadoop.fs.FileSystem`` for the paths of one job.

    Paths are strings (``file:/tmp/x``, ``hdfs://nn/x``, ``/tmp/x``); the file system is the
    one of the path given to the constructor.
    """

    def __init__(self, spark: SparkSession, path: str) -> None:
        self._jvm = spark._jvm
        self._Path = self._jvm.org.apache.hadoop.fs.Path
        self._conf = spark._jsc.hadoopConfiguration()
        self.fs = self._Path(path).getFileSystem(self._conf)

    def _p(self, path: str) -> Any:
        return self._Path(path)

    def qualify(self, path: str) -> str:
        """Absolute, scheme-qualified form (``/tmp/x`` -> ``file:/tmp/x``)."""
        return self.fs.makeQualified(self._p(path)).toString()

    def join(self, parent: str, *names: str) -> str:
        out = self._p(parent)
        for name in names:
            out = self._Path(out, name)
        return out.toString()

    def parent(self, path: str) -> str:
        return self._p(path).getParent().toString()

    def name(self, path: str) -> str:
        return self._p(path).getName()

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._p(path)))

    def is_dir(self, path: str) -> bool:
        return bool(self.fs.getFileStatus(self._p(path)).isDirectory())

    def list_names(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        return sorted(s.getPath().getName() for s in self.fs.listStatus(self._p(path)))

    def mkdirs(self, path: str) -> None:
        if not self.fs.mkdirs(self._p(path)):
            raise OSError(f"could not create {path}")

    def delete(self, path: str) -> None:
        """Delete a file or a directory tree; a missing path is fine."""
        if self.exists(path):
            self.fs.delete(self._p(path), True)

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst``, which must not exist (Hadoop would move *into* it)."""
        if self.exists(dst):
            raise OSError(f"cannot rename {src} to {dst}: the destination exists")
        if not self.fs.rename(self._p(src), self._p(dst)):
            raise OSError(f"could not rename {src} to {dst}")

    def write_text(self, path: str, text: str) -> None:
        stream = self.fs.create(self._p(path), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def read_text(self, path: str) -> str:
        sink = self._jvm.java.io.ByteArrayOutputStream()
        self._jvm.org.apache.hadoop.io.IOUtils.copyBytes(
            self.fs.open(self._p(path)), sink, 1 << 16, True
        )
        return bytes(sink.toByteArray()).decode("utf-8")


class AtomicOutput:
    """Stage a job's output beside its final place, then publish it in one rename.

    ``begin()`` checks the target and returns the staging directory to write into;
    ``commit()`` publishes it (``_SUCCESS`` last); ``fail_to(suffix)`` moves the staging
    directory to ``<output><suffix>`` instead (for an operator to inspect); ``abort()``
    removes it. Finished output is recognised by its ``_SUCCESS``.
    """

    def __init__(
        self, spark: SparkSession, output: str, overwrite: bool = False, run_id: str | None = None
    ) -> None:
        self.fs = HadoopFS(spark, output)
        self.final = self.fs.qualify(output.rstrip("/") or output)
        self.parent = self.fs.parent(self.final)
        self.name = self.fs.name(self.final)
        self.overwrite = overwrite
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.staging = self.fs.join(self.parent, f".{self.name}.staging-{self.run_id}")
        self._old = self.fs.join(self.parent, f".{self.name}.old-{self.run_id}")

    # -- checks ------------------------------------------------------------------------
    def _occupied(self) -> bool:
        """Anything at the final path other than an empty directory counts as existing."""
        if not self.fs.exists(self.final):
            return False
        return not (self.fs.is_dir(self.final) and not self.fs.list_names(self.final))

    def check(self) -> None:
        """Refuse an existing output unless overwriting (cheap: call before any work)."""
        if self._occupied() and not self.overwrite:
            finished = self.fs.exists(self.fs.join(self.final, SUCCESS))
            what = "a finished dataset" if finished else "something (not a finished dataset)"
            raise OutputExistsError(
                f"output {self.final} already holds {what}; pass --overwrite to replace it"
            )

    def _siblings(self, kind: str) -> list[str]:
        prefix = f".{self.name}.{kind}-"
        return [
            self.fs.join(self.parent, n)
            for n in self.fs.list_names(self.parent)
            if n.startswith(prefix)
        ]

    def recover(self) -> None:
        """Clean up after killed runs: drop stale staging directories; if a run died between
        moving the old output aside and publishing the new one, put the old one back."""
        for path in self._siblings("staging"):
            self.fs.delete(path)
        for path in self._siblings("old"):
            if not self.fs.exists(self.final) and self.fs.exists(self.fs.join(path, SUCCESS)):
                self.fs.rename(path, self.final)
            else:
                self.fs.delete(path)

    # -- protocol ----------------------------------------------------------------------
    def begin(self) -> str:
        self.recover()
        self.check()
        self.fs.mkdirs(self.staging)
        return self.staging

    def commit(self) -> str:
        if self.fs.exists(self.final):
            if self._occupied():
                if not self.overwrite:  # appeared while we ran
                    raise OutputExistsError(f"output {self.final} appeared while this job ran")
                self.fs.rename(self.final, self._old)
            else:
                self.fs.delete(self.final)
        self.fs.mkdirs(self.parent)
        self.fs.rename(self.staging, self.final)
        self.fs.write_text(self.fs.join(self.final, SUCCESS), "")
        self.fs.delete(self._old)
        return self.final

    def fail_to(self, suffix: str) -> str:
        """Publish the staging directory as ``<output><suffix>`` (replacing an older one)."""
        target = self.final + suffix
        self.fs.delete(target)
        self.fs.rename(self.staging, target)
        return target

    def abort(self) -> None:
        self.fs.delete(self.staging)
