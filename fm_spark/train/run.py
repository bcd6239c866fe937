"""``fm-spark train``: check the data, train on 1 or N workers, evaluate, write the run directory.

The run directory is what later stages (MLflow logging, batch scoring, scheduled retraining)
pick up, so it is self-contained::

    RUN/config.yaml        the resolved config (after --set overrides)
    RUN/feature_map.json   copy of the data's feature map: serving needs it with the weights
    RUN/checkpoint.pt      last finished epoch (model, optimizers, RNG, early stopping)
    RUN/best.pt            weights of the best validation epoch so far
    RUN/model.pt           the result: best weights (a state dict for build_model(...))
    RUN/metrics.json       valid/test metrics of model.pt, per-epoch history, run facts

Everything that can be checked before the first step is checked here, so a bad data
directory fails in a second with a message instead of minutes into a distributed launch.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from fm_spark.atomic import write_text_atomic
from fm_spark.config import DatasetConfig, config_hash
from fm_spark.features.feature_map import FEATURE_MAP_FILE, FeatureMap
from fm_spark.train import checkpoint
from fm_spark.train.errors import TrainError
from fm_spark.train.loop import (
    FAILURE_FILE,
    WorkerJob,
    build,
    evaluate_split,
    read_failure,
    setup_logging,
    train_worker,
)
from fm_spark.train.sizing import fit_to_data

__all__ = ["METRICS_FILE", "MODEL_FILE", "TrainError", "check_data_dir", "train"]

log = logging.getLogger("fm_spark.train")

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
SUCCESS = "_SUCCESS"
SPLITS = ("train", "valid", "test")


class _DataDir:
    """The featurize output, local or remote, seen through a pyarrow filesystem."""

    def __init__(self, location: str) -> None:
        from pyarrow import fs as pafs

        from fm_spark.data.reader import dataset_url

        self.url = dataset_url(location)
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.url)
        except Exception as exc:  # pyarrow raises several types here
            raise TrainError(f"cannot open data directory {location}: {exc}") from None
        self.location = location

    def exists(self, name: str = "") -> bool:
        from pyarrow import fs as pafs

        path = f"{self.root}/{name}" if name else self.root
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_text(self, name: str) -> str:
        with self.fs.open_input_stream(f"{self.root}/{name}") as handle:
            return handle.read().decode("utf-8")

    def split_url(self, split: str) -> str:
        return f"{self.url}/{split}"


def check_data_dir(data_dir: str, run_dir: Path | None = None) -> tuple[FeatureMap, dict[str, Any]]:
    """Refuse a data directory training cannot use; return its feature map and split layouts.

    Checks, in order: the directory, ``feature_map.json``, the ``_SUCCESS`` marker of a
    finished featurize run, the three splits, every split's Parquet schema and id ranges
    against the feature map, and each column's ids against its own field's range. Writes
    nothing (``run_dir`` is unused, kept for callers): a refused run leaves its run directory
    as it was.
    """
    import tempfile

    from fm_spark.data.reader import DataError, check_schema, split_layout
    from fm_spark.train.contracts import check_field_ranges

    data = _DataDir(data_dir)
    if not data.exists():
        raise TrainError(f"data directory {data_dir} does not exist")
    if not data.exists(FEATURE_MAP_FILE):
        raise TrainError(
            f"{data_dir} has no {FEATURE_MAP_FILE}: pass the output directory of "
            "`fm-spark featurize` as --data"
        )
    with tempfile.TemporaryDirectory(prefix="fm-spark-map-") as tmp:
        local_map = Path(tmp) / FEATURE_MAP_FILE
        local_map.write_text(data.read_text(FEATURE_MAP_FILE), encoding="utf-8")
        try:
            fmap = FeatureMap.load(local_map)
        except (ValueError, FileNotFoundError) as exc:
            raise TrainError(f"{data_dir}/{FEATURE_MAP_FILE} is not a feature map: {exc}") from None
    if not data.exists(SUCCESS):
        raise TrainError(
            f"{data_dir} has no {SUCCESS} marker: the feature job did not finish (or is still "
            "writing). Re-run `fm-spark featurize` into it"
        )
    layouts: dict[str, Any] = {}
    for split in SPLITS:
        if not data.exists(split):
            raise TrainError(f"{data_dir} has no {split}/ split: re-run `fm-spark featurize`")
        try:
            layout = split_layout(data.split_url(split), fmap.column_names)
            check_schema(layout, fmap, split)
        except DataError as exc:
            raise TrainError(str(exc)) from None
        check_field_ranges(layout, fmap, split, data_dir)
        layouts[split] = layout
    if layouts["valid"].rows == 0:
        raise TrainError(
            f"{data_dir}: the valid split is empty, and early stopping and model selection "
            "need it; give split.fractions.valid a share"
        )
    return fmap, layouts


def _prepare_run_dir(run_dir: Path, resume: bool, fmap: FeatureMap | None = None) -> None:
    has_checkpoint = (run_dir / checkpoint.CHECKPOINT_FILE).exists()
    if has_checkpoint and not resume:
        raise TrainError(
            f"{run_dir} already holds a run ({checkpoint.CHECKPOINT_FILE}); pass --resume to "
            "continue it, or choose another --output"
        )
    if has_checkpoint and fmap is not None:
        checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)  # unreadable: refused here
        _check_same_features(run_dir, fmap)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.remove_stale_temps(run_dir)
    if not has_checkpoint:
        for name in (checkpoint.BEST_FILE, MODEL_FILE, METRICS_FILE):
            (run_dir / name).unlink(missing_ok=True)
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)


def _check_same_features(run_dir: Path, fmap: FeatureMap) -> None:
    """``--resume`` continues training on the features the run started with, or refuses."""
    theirs = run_dir / FEATURE_MAP_FILE
    try:
        earlier = FeatureMap.load(theirs).fingerprint
    except (OSError, ValueError):
        earlier = None
    if earlier != fmap.fingerprint:
        raise TrainError(
            f"{run_dir} was trained on features with another fingerprint ({earlier}) than "
            f"--data's ({fmap.fingerprint}): its ids mean different things. Resume with the "
            "data it started on, or train into another --output"
        )


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def train(
    cfg: DatasetConfig,
    data_dir: str,
    model: str,
    output: Path,
    resume: bool = False,
    callbacks: tuple[Any, ...] = (),
) -> dict[str, Any]:
    """Train ``model`` on ``data_dir``'s train split; return (and write) its metrics.

    ``callbacks``: picklable ``on_epoch_end`` / ``on_train_end`` hooks (``WorkerJob.callbacks``).

    One worker trains in this process; ``cfg.train.workers > 1`` runs the same function on
    that many processes with TorchDistributor (DDP, gloo on CPU, NCCL on GPU).
    """
    from fm_spark.data.reader import DataError, steps_per_epoch
    from fm_spark.train.distributed import resolve_device

    setup_logging()
    spec = cfg.train
    run_dir = Path(output)
    fmap, layouts = check_data_dir(data_dir, run_dir)
    cfg = fit_to_data(cfg, layouts["train"].rows)
    spec = cfg.train
    worker_batch = _worker_batch_size(spec.batch_size, spec.workers)
    try:
        steps = steps_per_epoch(layouts["train"], worker_batch, spec.workers)
    except DataError as exc:
        raise TrainError(str(exc)) from None
    _report_shards(layouts["train"], spec.workers, steps, worker_batch)
    _prepare_run_dir(run_dir, resume, fmap)
    # Accepted: from here on the run directory is written.
    (run_dir / FEATURE_MAP_FILE).write_text(fmap.to_json(), encoding="utf-8")
    (run_dir / CONFIG_FILE).write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
    )
    job = WorkerJob(
        config=cfg.model_dump(mode="json"),
        model=model,
        train_url=layouts["train"].url,
        valid_url=layouts["valid"].url,
        feature_map=str((run_dir / FEATURE_MAP_FILE).resolve()),
        run_dir=str(run_dir.resolve()),
        steps_per_epoch=steps,
        worker_batch_size=worker_batch,
        distributed=spec.workers > 1,
        resume=resume,
        callbacks=tuple(callbacks),
        train_shard_rows=max(layouts["train"].shard_rows(spec.workers)),
        valid_rows=layouts["valid"].rows,
        num_columns=fmap.num_columns,
    )
    # The first torch optimizer a process builds imports torch._dynamo (1.4 s on 2 cores,
    # `python -X importtime`): a one-time library load like importing torch itself, which
    # happens before the clock too, so that train_seconds is training in a fresh process as
    # in a long-lived one (a fresh `fm-spark train` of FwFM on MovieLens: 2.5 s to its best
    # epoch with it, of which 1.1 s epochs). Workers TorchDistributor starts still load it.
    import torch._dynamo  # noqa: F401

    started = time.perf_counter()
    summary = _run_workers(job, spec.workers, spec.device)
    train_seconds = time.perf_counter() - started

    device = resolve_device(spec.device)
    best = checkpoint.load(run_dir / checkpoint.BEST_FILE)
    if best is None:
        raise TrainError(f"training finished without best weights in {run_dir}")
    net = build(cfg, model, fmap, dense_only=True)  # evaluation only: no gradients
    net.load_state_dict(best)
    net.to(device)
    checkpoint.atomic_save(best, run_dir / MODEL_FILE)
    evaluated = {
        split: evaluate_split(
            net,
            layouts[split].url,
            fmap,
            batch_size=spec.batch_size,
            device=device,
            pool=spec.reader_pool,
            workers=spec.reader_workers,
        )
        for split in ("valid", "test")
    }
    metrics = {
        "model": model,
        "dataset": cfg.name,
        "data_dir": data_dir,
        "run_dir": str(run_dir),
        "config_hash": config_hash(cfg),
        "feature_map_hash": fmap.config_hash,
        "train_rows": layouts["train"].rows,
        "train_seconds": train_seconds,
        "seconds_to_best": seconds_to_best(train_seconds, summary),
        **summary,
        **evaluated,
    }
    _write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def seconds_to_best(train_seconds: float, summary: dict[str, Any]) -> float:
    """Training time until the best epoch was validated: the run less the epochs after it,
    which only early stopping's patience needed. It is the "time to that quality" a comparison
    with a fixed-budget trainer (MLlib's ``fit``) is about."""
    best = summary.get("best_epoch") or 0
    after = sum(
        h.get("epoch_seconds", h["seconds"]) for h in summary["history"] if h["epoch"] > best
    )
    return max(train_seconds - after, 0.0)


def _worker_batch_size(batch_size: int, workers: int) -> int:
    """``train.batch_size`` is the global batch: N workers take ``batch_size / N`` rows each.

    DDP averages the workers' gradients, so each step then sees the same number of rows
    whatever ``--workers`` is, and the learning rate and epochs tuned on one worker carry
    over unchanged.
    """
    if batch_size % workers:
        raise TrainError(
            f"train.batch_size {batch_size} is the global batch and must split evenly over "
            f"{workers} workers; use a multiple of {workers}"
        )
    return batch_size // workers


def _report_shards(layout: Any, workers: int, steps: int, worker_batch: int) -> None:
    used = steps * worker_batch * workers
    log.info(
        "train split: %d rows in %d row groups; %d worker(s) x %d steps x %d rows = %d rows "
        "per epoch",
        layout.rows,
        layout.num_row_groups,
        workers,
        steps,
        worker_batch,
        used,
    )
    if workers > 1:
        shards = layout.shard_rows(workers)
        unused = 1 - used / max(layout.rows, 1)
        if unused > 0.1:
            log.warning(
                "shards are uneven (rows per worker: %s): %.0f%% of the train rows sit out each "
                "epoch so that every worker takes the same number of steps; write smaller row "
                "groups (output.row_group_rows) to balance them",
                shards,
                100 * unused,
            )


def _run_workers(job: WorkerJob, workers: int, device: str) -> dict[str, Any]:
    if workers == 1:
        return train_worker(job)
    from fm_spark.train.distributed import launch, resolve_device

    use_gpu = resolve_device(device).type == "cuda"
    try:
        return launch(train_worker, job, num_processes=workers, use_gpu=use_gpu)
    except TrainError:
        raise
    except Exception as exc:
        recorded = read_failure(job.run_dir)
        if recorded is not None:
            raise recorded from None
        tail = str(exc).strip().splitlines()[-15:]
        raise TrainError(
            f"distributed training on {workers} workers failed: " + "\n".join(tail)
        ) from None
