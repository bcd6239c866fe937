"""The measurement behind ``train:`` defaults: a small sweep of optimizer settings per model.

``python -m fm_spark.bench.defaults --data DIR [--data DIR ...] --models lr,fm,ffm
--configs adam/0.001/4096,adam/0.01/2048,adagrad/0.1/2048 --epochs 30 --out results.jsonl``

Each featurized directory is loaded into memory once (the splits are small enough here) and
every (model, config) pair trains on it with the project's own pieces — ``build`` (model and
L2 from the config), ``make_optimizers`` and ``StepFn`` — epoch by epoch with early stopping
on valid logloss, recording valid/test metrics per epoch. In-memory batches replace the
Petastorm feed only to keep the sweep fast on two cores; the arithmetic is the training's.
One JSON line per run goes to ``--out``, so a sweep can be resumed and tabulated later.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml

from fm_spark.config import DatasetConfig, TrainSpec
from fm_spark.features.feature_map import FeatureMap
from fm_spark.train.early_stopping import EarlyStopping
from fm_spark.train.metrics import evaluate


def load_split(data_dir: Path, split: str, fmap: FeatureMap) -> dict[str, torch.Tensor | None]:
    table = pq.read_table(str(data_dir / split))
    ids = np.stack([table[c].to_numpy() for c in fmap.column_names], axis=1).astype(np.int64)
    cols = fmap.value_columns
    values = None
    if any(cols):
        values = np.stack(
            [
                table[c].to_numpy().astype(np.float32) if c else np.ones(len(table), np.float32)
                for c in cols
            ],
            axis=1,
        )
    label = table["label"].to_numpy().astype(np.float32)
    return {
        "ids": torch.from_numpy(ids),
        "values": None if values is None else torch.from_numpy(values),
        "label": torch.from_numpy(label),
    }


def parse_config_name(name: str) -> dict[str, Any]:
    """``adam/0.01/2048`` -> optimizer adam, lr 0.01, batch 2048; extra ``/key=value`` parts
    (``/l2_embed=1e-6``) set other ``train`` keys."""
    opt, lr, batch, *extra = name.split("/")
    out: dict[str, Any] = {"optimizer": opt, "lr": float(lr), "batch_size": int(batch)}
    for item in extra:
        key, val = item.split("=")
        out[key] = yaml.safe_load(val)
    return out


def _scores(net: torch.nn.Module, data: dict[str, Any], batch: int = 65536) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        n = data["label"].shape[0]
        for a in range(0, n, batch):
            v = None if data["values"] is None else data["values"][a : a + batch]
            out.append(net(data["ids"][a : a + batch], v).float().numpy())
    net.train()
    return np.concatenate(out)


def run_one(
    cfg: DatasetConfig,
    fmap: FeatureMap,
    splits: dict[str, dict[str, Any]],
    model: str,
    train_over: dict[str, Any],
    epochs: int,
    patience: int,
    seed: int = 0,
    time_limit: float = 1e9,
) -> dict[str, Any]:
    from fm_spark.data.reader import Batch
    from fm_spark.train.decay import RowDecay
    from fm_spark.train.loop import StepFn, build, make_optimizers
    from fm_spark.train.sizing import fit_to_data

    spec = TrainSpec.model_validate({**cfg.train.model_dump(), **train_over})
    cfg = fit_to_data(
        cfg.model_copy(update={"train": spec}), int(splits["train"]["label"].shape[0])
    )
    spec = cfg.train
    torch.manual_seed(seed)
    net = build(cfg, model, fmap)
    opts = make_optimizers(net, spec)
    n = splits["train"]["label"].shape[0]
    bs = spec.batch_size
    decay = RowDecay.build(net, spec, (n // bs) * bs)
    step = StepFn(net, net, opts, torch.device("cpu"), decay)
    tr = splits["train"]
    gen = torch.Generator().manual_seed(seed)
    history = []
    best = None
    stopper = EarlyStopping(spec.early_stopping_metric, patience)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen)
        losses = []
        for a in range(0, n - bs + 1, bs):
            idx = perm[a : a + bs]
            v = None if tr["values"] is None else tr["values"][idx]
            losses.append(step(Batch(tr["ids"][idx], v, tr["label"][idx])))
        rec: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        for split in ("valid", "test"):
            m = evaluate(splits[split]["label"].numpy(), _scores(net, splits[split]))
            rec[split] = {"auc": m["auc"], "logloss": m["logloss"]}
        rec["seconds"] = time.perf_counter() - started
        history.append(rec)
        # `fm-spark train`'s own rule (its metric, tie-break and patience).
        if stopper.update(epoch, rec["valid"][spec.early_stopping_metric], rec["valid"]["logloss"]):
            best = rec
        elif stopper.should_stop:
            break
        if rec["seconds"] > time_limit:
            break
    chosen = best or history[-1]
    peak_auc = max(history, key=lambda r: r["valid"]["auc"])
    return {
        "model": model,
        **train_over,
        "fitted_batch_size": spec.batch_size,
        "fitted_lr": spec.lr,
        "best_epoch": chosen["epoch"],
        "epochs_run": len(history),
        "valid_auc": chosen["valid"]["auc"],
        "valid_logloss": chosen["valid"]["logloss"],
        "test_auc": chosen["test"]["auc"],
        "test_logloss": chosen["test"]["logloss"],
        "peak_valid_auc_epoch": peak_auc["epoch"],
        "seconds_to_best": chosen["seconds"],
        "history": history,
    }


def main(argv: list[str] | None = None) -> None:
    from fm_spark.config import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", action="append", required=True, help="name=CONFIG:DIR")
    p.add_argument("--models", default="lr,fm,ffm")
    p.add_argument("--configs", required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--time-limit", type=float, default=600)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["model"], r["config"]))
    for item in args.data:
        name, rest = item.split("=", 1)
        conf, ddir = rest.split(":", 1)
        cfg = load_config(conf, args.overrides)
        data_dir = Path(ddir)
        fmap = FeatureMap.load(data_dir)
        splits = {s: load_split(data_dir, s, fmap) for s in ("train", "valid", "test")}
        for model in args.models.split(","):
            for cname in args.configs.split(","):
                if (name, model, cname) in done:
                    continue
                over = parse_config_name(cname)
                r = run_one(
                    cfg,
                    fmap,
                    splits,
                    model,
                    over,
                    args.epochs,
                    args.patience,
                    time_limit=args.time_limit,
                )
                rows = int(splits["train"]["label"].shape[0])
                r.update(dataset=name, config=cname, train_rows=rows)
                with out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(
                    f"{name} {model} {cname}: test auc {r['test_auc']:.4f} ll "
                    f"{r['test_logloss']:.4f} best epoch {r['best_epoch']}/{r['epochs_run']} "
                    f"{r['seconds_to_best']:.0f}s",
                    flush=True,
                )


def table(paths: list[str]) -> str:
    """Markdown: one row per (dataset, config), test AUC (best epoch / epochs run) per model."""
    runs = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines()]
    models = list(dict.fromkeys(r["model"] for r in runs))
    keys = list(dict.fromkeys((r["dataset"], r["config"]) for r in runs))
    cell = {(r["dataset"], r["config"], r["model"]): r for r in runs}
    lines = [
        "| data | optimizer/lr/batch | " + " | ".join(models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    for ds, conf in keys:
        row = []
        for m in models:
            r = cell.get((ds, conf, m))
            row.append(f"{r['test_auc']:.4f} ({r['best_epoch']}/{r['epochs_run']})" if r else "")
        lines.append(f"| {ds} | `{conf}` | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
