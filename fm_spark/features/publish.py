"""Publish a job's output folder safely: one writer, never a half dataset, never a lost one.

Any job that writes a folder other stages read (the feature job's dataset, ``fm-spark score``'s
predictions) publishes it through this module::

    from fm_spark.features.publish import PublishError, publishing

    with publishing(spark, output, overwrite=overwrite, marker_files=("meta.json",)) as pub:
        df.write.parquet(pub.join("predictions"))    # write everything under pub.staging
        pub.write_text("meta.json", json.dumps(meta))
    # here the output is published (``_SUCCESS`` last); on an exception nothing changed

What a caller gets (``P`` is the output's parent folder, ``N`` its name):

- **Only its own kind is replaced.** A *finished dataset* is a folder holding ``_SUCCESS`` and
  every one of ``marker_files``. ``overwrite=True`` replaces such a folder and nothing else; an
  output holding anything else (a file, someone's folder, ``.``, ``/``, ``""``) is refused
  whatever the flags, and is never moved or deleted. An empty folder is taken as absent.
- **One writer per output.** ``P/.N.lease`` is created with ``create(overwrite=false)`` (one
  atomic call on HDFS and local file systems) and holds the job id, host, pid and a heartbeat
  that a daemon thread refreshes. A second job fails at once with :class:`OutputBusyError`. A
  lease is taken over only when stale: its heartbeat is older than ``lease_stale_s`` (default
  120 s, env ``FM_SPARK_LEASE_STALE_S``), or it names a dead pid on this host. Before each step
  of the publish the writer checks it still holds the lease.
- **No window loses the last good dataset.** The job writes into ``P/.N.staging-<id>``. The
  publish then runs these steps, each a checkpoint a crash can stop at:

  ``staged``        ``_MANIFEST.json`` (every file and its size) is written into the staging folder;
  ``old_aside``     a previous dataset is renamed to ``P/.N.old-<id>`` (it keeps its ``_SUCCESS``);
  ``moved``         staging is renamed to the output;
  ``verified``      the output's files are checked against the manifest;
  ``marked``        ``_SUCCESS`` is written into the output, and checked with the marker files;
  ``old_unmarked``  the old copy's ``_SUCCESS`` is deleted (so a half-deleted copy never has one);
  ``done``          the old copy is deleted and the lease released.

  The next run on the output (under its lease, before anything else) recovers from every
  intermediate state: an output without ``_SUCCESS`` but with a manifest (a publish that did not
  finish) is moved to ``P/.N.trash-<id>``; if no finished output is left, the old copy that still
  has its ``_SUCCESS`` is renamed back; staging, trash and unmarked old folders are deleted
  (marker first). So the output path shows the previous dataset, then briefly nothing, then the
  new one complete with its ``_SUCCESS``; the previous one is deleted only after that.

Tests kill a real process at each step: ``FM_SPARK_PUBLISH_FAULT=kill@<step>`` makes the
publishing process SIGKILL itself there (``wait@<step>:<file>`` blocks until ``<file>`` exists).
The guarantee per file system (rename atomic or a copy) is stated in the README's Output layout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession

from fm_spark.features.io import SUCCESS, HadoopFS

__all__ = [
    "MANIFEST",
    "STEPS",
    "OutputBusyError",
    "OutputRefusedError",
    "PublishError",
    "Publisher",
    "publishing",
]

log = logging.getLogger(__name__)

MANIFEST = "_MANIFEST.json"
FAILED_MARKER = "_FAILED"
STEPS = ("staged", "old_aside", "moved", "verified", "marked", "old_unmarked", "done")
FAULT_ENV = "FM_SPARK_PUBLISH_FAULT"
STALE_ENV = "FM_SPARK_LEASE_STALE_S"
DEFAULT_STALE_S = 120.0


class PublishError(RuntimeError):
    """The output cannot be published; the message says why and what to do."""


class OutputRefusedError(PublishError):
    """``--output`` holds something this job may not replace (with or without overwrite)."""


class OutputBusyError(PublishError):
    """Another live job holds the output's lease."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _java_message(exc: BaseException) -> str:
    """The first line of a Java exception, without py4j's traceback."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


class _Lease:
    """``P/.N.lease``: who writes the output, refreshed by a heartbeat thread."""

    def __init__(self, fs: HadoopFS, path: str, job_id: str, stale_s: float) -> None:
        self.fs, self.path, self.job_id, self.stale_s = fs, path, job_id, stale_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started_at = _now_iso()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _content(self) -> str:
        return json.dumps(
            {
                "job_id": self.job_id,
                "host": self.host,
                "pid": self.pid,
                "started_at": self.started_at,
                "heartbeat": time.time(),
                "stale_after_s": self.stale_s,
            }
        )

    def _read(self, path: str | None = None) -> dict[str, Any] | None:
        """The lease's content; ``{}`` while a heartbeat rewrites it, ``None`` if absent."""
        try:
            return json.loads(self.fs.read_text(path or self.path))
        except Exception:
            return None if not self.fs.exists(path or self.path) else {}

    def _stale(self, held: dict[str, Any]) -> bool:
        if not held:  # being rewritten right now: its writer is alive
            return False
        if held.get("host") == self.host and held.get("pid") not in (None, self.pid):
            try:
                os.kill(int(held["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                pass
        return time.time() - float(held.get("heartbeat", 0)) > self.stale_s

    def acquire(self, output: str) -> None:
        for _ in range(3):
            if self.fs.create_new(self.path, self._content()):
                self._start_heartbeat()
                return
            held = self._read()
            if held is None:  # released between our two calls: try again
                continue
            if not self._stale(held):
                raise OutputBusyError(_busy_message(output, held, self.stale_s))
            # Take over a stale lease: the rename succeeds for one job only; check that what we
            # moved is the lease we judged stale (not one a faster job just created).
            grabbed = f"{self.path}.stale-{self.job_id}"
            try:
                self.fs.rename(self.path, grabbed)
            except OSError:
                continue
            if self._read(grabbed) != held:
                with suppress(OSError):
                    self.fs.rename(grabbed, self.path)
                raise OutputBusyError(_busy_message(output, held, self.stale_s))
            log.warning(
                "publish: taking over the stale lease of job %s on %s (last heartbeat %.0fs ago)",
                held.get("job_id"),
                output,
                time.time() - float(held.get("heartbeat", 0)),
            )
            self.fs.delete(grabbed)
        raise OutputBusyError(f"could not take the lease {self.path}: other jobs keep taking it")

    def _start_heartbeat(self) -> None:
        interval = max(0.5, min(30.0, self.stale_s / 4))

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    if not self.holds():
                        self.lost = True
                        return
                    self.fs.write_text(self.path, self._content())
                except Exception:  # the session is gone: the owner finds out at its next step
                    return

        self._thread = threading.Thread(target=beat, name="fm-spark-lease", daemon=True)
        self._thread.start()

    def holds(self) -> bool:
        held = self._read()
        return held == {} or (held is not None and held.get("job_id") == self.job_id)

    def check(self, output: str) -> None:
        if self.lost or not self.holds():
            self.lost = True
            held = self._read() or {}
            raise PublishError(
                f"this job ({self.job_id}) lost the lease on {output} to job "
                f"{held.get('job_id', '?')} (its heartbeat stopped for over {self.stale_s:g}s); "
                "nothing was published"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self._read()
            if held is not None and held.get("job_id") == self.job_id:
                self.fs.delete(self.path)
        except Exception:  # a stale lease is taken over by the next run
            log.warning("publish: could not release the lease %s", self.path)


def _busy_message(output: str, held: dict[str, Any], stale_s: float) -> str:
    age = time.time() - float(held.get("heartbeat", time.time()))
    return (
        f"output {output} is being written by another job (job {held.get('job_id', '?')} "
        f"on {held.get('host', '?')}, pid {held.get('pid', '?')}, "
        f"started {held.get('started_at', '?')}, "
        f"last heartbeat {age:.0f}s ago); two jobs cannot write one output. Wait for it to finish "
        f"or choose another --output (a lease without a heartbeat for {stale_s:g}s is taken over)."
    )


class Publisher:
    """The protocol of this module as explicit calls (:func:`publishing` wraps them).

    ``begin()`` validates the output, takes the lease, recovers from killed runs, checks the
    target and returns the staging folder; ``commit()`` publishes it; ``abort()`` drops it;
    ``fail_to(suffix)`` publishes it as ``<output><suffix>`` instead, for an operator to look
    at (a failed run's diagnostics). ``abort()`` and ``commit()`` release the lease.
    """

    def __init__(
        self,
        spark: SparkSession,
        output: str,
        overwrite: bool = False,
        marker_files: Sequence[str] = (),
        job_id: str | None = None,
        lease_stale_s: float | None = None,
    ) -> None:
        self.overwrite = overwrite
        self.marker_files = tuple(marker_files)
        self.job_id = job_id or uuid.uuid4().hex[:12]
        stale = lease_stale_s or float(os.environ.get(STALE_ENV, DEFAULT_STALE_S))
        if not output or not output.strip():
            raise OutputRefusedError("--output is empty: name the folder to publish to")
        try:
            self.fs = HadoopFS(spark, output)
            self.final = self.fs.qualify(output.rstrip("/") or output)
            parent = self.fs._p(self.final).getParent()
        except Exception as exc:
            raise OutputRefusedError(
                f"--output {output!r} is not a usable path: {_java_message(exc)}"
            ) from None
        if parent is None:
            raise OutputRefusedError(
                f"--output {output!r} is the root of a file system: a dataset needs its own folder"
            )
        self.parent = parent.toString()
        self.name = self.fs.name(self.final)
        self.staging = self._sibling("staging", self.job_id)
        self._old = self._sibling("old", self.job_id)
        self._lease = _Lease(
            self.fs, self.fs.join(self.parent, f".{self.name}.lease"), self.job_id, stale
        )
        self._leased = False

    # -- paths -------------------------------------------------------------------------
    def _sibling(self, kind: str, run: str) -> str:
        return self.fs.join(self.parent, f".{self.name}.{kind}-{run}")

    def _siblings(self, kind: str) -> list[str]:
        prefix = f".{self.name}.{kind}-"
        return [
            self.fs.join(self.parent, n)
            for n in self.fs.list_names(self.parent)
            if n.startswith(prefix)
        ]

    def join(self, *names: str) -> str:
        """A path inside the staging folder."""
        return self.fs.join(self.staging, *names)

    def write_text(self, name: str, text: str) -> None:
        """Write a (small) file into the staging folder."""
        self.fs.write_text(self.join(name), text)

    # -- what is at a path -------------------------------------------------------------
    def _has(self, folder: str, name: str) -> bool:
        return self.fs.exists(self.fs.join(folder, name))

    def _is_dataset(self, folder: str) -> bool:
        return all(self._has(folder, n) for n in (SUCCESS, *self.marker_files))

    def _state(self, path: str) -> str:
        """absent | empty | dataset | unfinished (our publish, not marked) | foreign."""
        if not self.fs.exists(path):
            return "absent"
        if not self.fs.is_dir(path):
            return "foreign"
        if not self.fs.list_names(path):
            return "empty"
        if self._is_dataset(path):
            return "dataset"
        if self._has(path, MANIFEST) and not self._has(path, SUCCESS):
            return "unfinished"
        return "foreign"

    def _discard(self, path: str) -> None:
        """Delete a folder this protocol made: its ``_SUCCESS`` goes first, so a delete that
        dies halfway never leaves something that looks finished."""
        self.fs.delete(self.fs.join(path, SUCCESS))
        self.fs.delete(path)

    # -- protocol ----------------------------------------------------------------------
    def begin(self) -> str:
        try:
            if self._state(self.final) == "foreign":  # refused before touching anything
                self.check()
            self.fs.mkdirs(self.parent)
            self._lease.acquire(self.final)
            self._leased = True
            self.recover()
            self.check()
            self.fs.mkdirs(self.staging)
        except PublishError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise PublishError(f"cannot prepare {self.final}: {_java_message(exc)}") from None
        log.info("publish: job %s writes %s (staging %s)", self.job_id, self.final, self.staging)
        return self.staging

    def check(self) -> None:
        """Refuse what may not be replaced (cheap: call before any work)."""
        state = self._state(self.final)
        if state == "dataset" and not self.overwrite:
            raise OutputRefusedError(
                f"output {self.final} already holds a finished dataset; pass --overwrite to "
                "replace it (the current one stays until the new one is complete)"
            )
        if state in ("foreign", "unfinished"):
            names = self.fs.list_names(self.final) if self.fs.is_dir(self.final) else []
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            what = f"a folder holding {shown}" if names else "a file"
            needs = " + ".join((SUCCESS, *self.marker_files))
            raise OutputRefusedError(
                f"output {self.final} is {what}, not a dataset written by fm-spark (which "
                f"has {needs}). It is left untouched, with or without --overwrite: choose "
                "another --output."
            )

    def recover(self) -> None:
        """Bring the output back to a finished state after killed runs (under the lease)."""
        state = self._state(self.final)
        if state == "unfinished":  # a publish that died before its _SUCCESS: roll it back
            trash = self._sibling("trash", self.job_id)
            log.warning("publish: rolling back an unfinished publish at %s", self.final)
            self.fs.rename(self.final, trash)
            state = "absent"
        olds = [p for p in self._siblings("old") if self._has(p, SUCCESS)]
        if state in ("absent", "empty") and olds:
            newest = max(
                olds, key=lambda p: self.fs.fs.getFileStatus(self.fs._p(p)).getModificationTime()
            )
            if state == "empty":
                self.fs.delete_empty_dir(self.final)
            log.warning("publish: restoring the last finished dataset %s -> %s", newest, self.final)
            self.fs.rename(newest, self.final)
            state = "dataset"
        for path in self._siblings("old"):
            if state == "dataset" or not self._has(path, SUCCESS):
                self._discard(path)  # keep a marked old copy while the output is not a dataset
        for kind in ("staging", "trash"):
            for path in self._siblings(kind):
                self._discard(path)

    def commit(self) -> str:
        """Publish the staging folder (the steps in the module docstring); release the lease."""
        try:
            self._commit()
        except PublishError:
            self._roll_back()
            raise
        except Exception as exc:
            self._roll_back()
            raise PublishError(f"publishing {self.final} failed: {_java_message(exc)}") from None
        self._release()
        return self.final

    def _roll_back(self) -> None:
        """After a failed commit, put the previous dataset back now (as the next run would)."""
        try:
            if self._leased and not self._lease.lost and self._lease.holds():
                self.recover()
        except Exception as exc:  # the next run recovers
            log.warning("publish: roll-back of %s failed: %s", self.final, _java_message(exc))
        finally:
            self.abort()

    def _commit(self) -> None:
        missing = [n for n in self.marker_files if not self._has(self.staging, n)]
        if missing:
            raise PublishError(
                f"not publishing {self.final}: the job wrote no {', '.join(missing)}"
            )
        self.fs.delete(self.fs.join(self.staging, SUCCESS))
        manifest = self.fs.files(self.staging)
        self.fs.write_text(
            self.fs.join(self.staging, MANIFEST),
            json.dumps({"job_id": self.job_id, "files": manifest}, sort_keys=True),
        )
        self._step("staged")
        state = self._state(self.final)
        if state == "dataset" and self.overwrite:
            self.fs.rename(self.final, self._old)
            self._step("old_aside")
        elif state == "empty":
            self.fs.delete_empty_dir(self.final)
        elif state != "absent":  # appeared while we ran (the lease keeps fm-spark jobs out)
            self.check()
            raise OutputRefusedError(f"output {self.final} appeared while this job ran")
        self.fs.rename(self.staging, self.final)
        self._step("moved")
        published = {k: v for k, v in self.fs.files(self.final).items() if k != MANIFEST}
        if published != manifest:
            lost = sorted(set(manifest) - set(published))[:5]
            raise PublishError(
                f"{self.final} does not match its manifest after the move (e.g. {lost}); "
                "it was not marked finished and the previous dataset is restored on the next run"
            )
        self._step("verified")
        self.fs.write_text(self.fs.join(self.final, SUCCESS), "")
        if not self._is_dataset(self.final):
            raise PublishError(f"{self.final} lost its {SUCCESS} right after writing it")
        self._step("marked")
        if self.fs.exists(self._old):
            self.fs.delete(self.fs.join(self._old, SUCCESS))
            self._step("old_unmarked")
            self.fs.delete(self._old)
        self._step("done")
        log.info("publish: %s published by job %s", self.final, self.job_id)

    def _step(self, step: str) -> None:
        """A checkpoint between two steps: the lease is still ours; faults for tests."""
        self._lease.check(self.final)
        fault = os.environ.get(FAULT_ENV, "")
        action, _, where = fault.partition("@")
        point, _, arg = where.partition(":")
        if point != step:
            return
        if action == "kill":
            log.warning("publish: %s=%s: killing this process", FAULT_ENV, fault)
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "wait":
            deadline = time.monotonic() + 300
            while not os.path.exists(arg) and time.monotonic() < deadline:
                time.sleep(0.1)

    def fail_to(self, suffix: str) -> str:
        """Publish the staging folder as ``<output><suffix>``, replacing an older one made here
        (it holds ``_FAILED``); a folder of anyone else's there is kept and the failed output goes
        to ``<output><suffix>-<job id>``. Never carries ``_SUCCESS``."""
        target = self.final + suffix
        if self._state(target) not in ("absent", "empty") and not self._has(target, FAILED_MARKER):
            target = f"{target}-{self.job_id}"
        self.fs.delete(self.fs.join(self.staging, SUCCESS))
        self.fs.write_text(self.fs.join(self.staging, FAILED_MARKER), self.job_id + "\n")
        if self._state(target) == "empty":
            self.fs.delete_empty_dir(target)
        elif self.fs.exists(target):
            self._discard(target)
        self.fs.rename(self.staging, target)
        return target

    def abort(self) -> None:
        """Drop the staging folder and release the lease (safe to call twice)."""
        try:
            if self._leased:
                self.fs.delete(self.staging)
        finally:
            self._release()

    def _release(self) -> None:
        if self._leased:
            self._leased = False
            self._lease.release()


@contextmanager
def publishing(
    spark: SparkSession,
    output: str,
    overwrite: bool = False,
    marker_files: Sequence[str] = (),
    job_id: str | None = None,
    lease_stale_s: float | None = None,
) -> Iterator[Publisher]:
    """Yield a :class:`Publisher` whose ``staging`` folder the body fills; publish it when the
    body returns, drop it (and change nothing at ``output``) when the body raises.

    ``marker_files``: names (relative to the output) that, with ``_SUCCESS``, make a folder a
    finished output of the caller's kind: only such a folder is replaced by ``overwrite``, and
    the body must write them. Raises :class:`OutputRefusedError` / :class:`OutputBusyError`
    before the body runs and :class:`PublishError` if the publish itself fails.
    """
    pub = Publisher(
        spark,
        output,
        overwrite=overwrite,
        marker_files=marker_files,
        job_id=job_id,
        lease_stale_s=lease_stale_s,
    )
    pub.begin()
    try:
        yield pub
    except BaseException:
        pub.abort()
        raise
    pub.commit()
