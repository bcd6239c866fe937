"""Training end to end in one process: quality against the planted truth, the run directory,
the NaN guard, and data directories that must be refused before training starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from train_support import config, one_torch_thread, planted, write_config

from fm_spark.cli import main
from fm_spark.features.feature_map import FeatureMap
from fm_spark.models import build_model
from fm_spark.train.early_stopping import EarlyStopping
from fm_spark.train.errors import NonFiniteLossError
from fm_spark.train.run import TrainError, train

__all__ = ["one_torch_thread", "planted"]  # fixtures, imported for pytest

METRICS = ("auc", "logloss", "normalized_entropy", "calibration")


@pytest.fixture(scope="module")
def trained(planted, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """LR, FM and FFM trained once on the planted data (shared by the tests below)."""
    data, _ = planted
    runs = tmp_path_factory.mktemp("runs")
    return {m: train(config(), str(data), m, runs / m) for m in ("lr", "fm", "ffm")}


def test_fm_and_ffm_come_close_to_the_planted_model_and_beat_lr(planted, trained) -> None:
    _, oracle = planted
    auc = {m: trained[m]["test"]["auc"] for m in trained}
    for model in ("fm", "ffm"):
        assert auc[model] > oracle["test"] - 0.02, (model, auc, oracle)
        assert auc[model] > auc["lr"] + 0.05, (model, auc)
    assert auc["lr"] > 0.6  # learned something: the linear part of the planted model


def test_metrics_cover_valid_and_test(trained) -> None:
    m = trained["fm"]
    for split in ("valid", "test"):
        assert m[split]["rows"] == 10_000
        for key in METRICS:
            assert np.isfinite(m[split][key]), (split, key)
        assert m[split]["normalized_entropy"] < 1.0  # better than predicting the base rate
        assert 0.8 < m[split]["calibration"] < 1.2
    assert m["model"] == "fm" and m["workers"] == 1 and m["device"] == "cpu"
    assert m["train_samples_per_s"] > 0
    assert 1 <= m["best_epoch"] <= m["epochs_run"] <= 8
    assert [h["epoch"] for h in m["history"]] == list(range(1, m["epochs_run"] + 1))


def test_run_directory_is_self_contained(planted, trained) -> None:
    data, _ = planted
    run = Path(trained["ffm"]["run_dir"])
    for name in ("config.yaml", "feature_map.json", "checkpoint.pt", "best.pt", "model.pt"):
        assert (run / name).exists(), name
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(trained["ffm"]))
    # model.pt is the best epoch's weights: rebuilding from the run directory alone
    # reproduces the reported test AUC.
    fmap = FeatureMap.load(run)
    model = build_model("ffm", fmap, embed_dim=4)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    table = pq.read_table(data / "test")
    ids = torch.from_numpy(np.stack([table[c].to_numpy() for c in fmap.column_names], 1)).long()
    from fm_spark.train.metrics import roc_auc

    with torch.no_grad():
        auc = roc_auc(table["label"].to_numpy(), model(ids).numpy())
    assert auc == pytest.approx(trained["ffm"]["test"]["auc"], abs=1e-6)
    best = trained["ffm"]["best_epoch"]
    history = trained["ffm"]["history"]
    assert trained["ffm"]["valid"]["logloss"] == pytest.approx(
        history[best - 1]["valid"]["logloss"], rel=1e-5
    )


@pytest.mark.parametrize("model", ["poly2", "fwfm"])
def test_the_other_models_train_too(planted, tmp_path: Path, model: str) -> None:
    data, _ = planted
    result = train(config(epochs=2, optimizer="adagrad", lr=0.05), str(data), model, tmp_path)
    assert result["model"] == model and result["epochs_run"] == 2
    assert result["test"]["auc"] > 0.7, result["test"]
    assert (tmp_path / "model.pt").exists()


def test_an_existing_run_is_not_overwritten_without_resume(planted, trained) -> None:
    data, _ = planted
    with pytest.raises(TrainError, match="--resume"):
        train(config(), str(data), "fm", Path(trained["fm"]["run_dir"]))


def test_resuming_a_finished_run_trains_no_more(planted, trained, tmp_path: Path) -> None:
    data, _ = planted
    run = tmp_path / "lr"
    shutil.copytree(trained["lr"]["run_dir"], run)
    again = train(config(), str(data), "lr", run, resume=True)
    assert again["epochs_run"] == trained["lr"]["epochs_run"]
    assert again["test"]["auc"] == pytest.approx(trained["lr"]["test"]["auc"], abs=1e-9)


def test_nan_learning_rate_stops_with_a_message(planted, tmp_path: Path) -> None:
    data, _ = planted
    with pytest.raises(NonFiniteLossError) as err:
        train(config(lr=1e30), str(data), "fm", tmp_path / "nan")
    message = str(err.value)
    assert "epoch 1, step 2" in message
    assert "learning rate" in message and "train.lr=1e+30" in message
    assert "scaled" in message
    assert not (tmp_path / "nan" / "model.pt").exists()
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def test_early_stopping_keeps_the_best_epoch() -> None:
    stop = EarlyStopping("logloss", patience=2)
    assert [stop.update(e, v) for e, v in enumerate([0.5, 0.4, 0.45, 0.41], 1)] == [
        True,
        True,
        False,
        False,
    ]
    assert stop.best_epoch == 2 and stop.should_stop
    auc = EarlyStopping("auc", patience=0)
    assert auc.update(1, 0.7) and not auc.should_stop
    assert not auc.update(2, 0.69) and auc.should_stop
    restored = EarlyStopping()
    restored.load_state_dict(stop.state_dict())
    assert restored == stop


def test_auc_stopping_gives_a_tie_to_the_better_logloss() -> None:
    """A 20K-row FwFM run kept epoch 1 (valid AUC 0.71352) over epoch 2 (0.71349, logloss
    0.520 against 0.537): the same ranking, a much better model."""
    stop = EarlyStopping("auc", patience=2)
    assert stop.update(1, 0.71352, 0.537)
    assert stop.update(2, 0.71349, 0.520)  # a tie, better calibrated
    assert not stop.update(3, 0.71351, 0.530)  # a tie, worse logloss
    assert not stop.update(4, 0.7130, 0.510)  # a real AUC loss is never a tie
    assert stop.best_epoch == 2 and stop.should_stop
    assert stop.best_value == 0.71352  # ties never lower the bar
    assert EarlyStopping("auc").update(1, 0.7, None)


# -- refused before training starts -----------------------------------------------------------


def _copy(planted_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(planted_dir, out)
    return out


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_feature_map", "no feature_map.json"),
        ("no_success", "no _SUCCESS marker"),
        ("missing_split", "no test/ split"),
        ("wrong_schema", "missing column 'f3'"),
        ("other_feature_map", "different featurize runs"),
        ("not_there", "does not exist"),
    ],
)
def test_bad_data_directory_is_refused(planted, tmp_path: Path, breakage: str, message) -> None:
    data = _copy(planted[0], tmp_path)
    if breakage == "no_feature_map":
        (data / "feature_map.json").unlink()
    elif breakage == "no_success":
        (data / "_SUCCESS").unlink()
    elif breakage == "missing_split":
        shutil.rmtree(data / "test")
    elif breakage == "wrong_schema":
        part = sorted((data / "valid").glob("*.parquet"))[0]
        pq.write_table(pq.read_table(part).drop(["f3"]), part)
    elif breakage == "other_feature_map":
        FeatureMap.synthetic([3] * 8).save(data)
    elif breakage == "not_there":
        shutil.rmtree(data)
    with pytest.raises(TrainError, match=message):
        train(config(), str(data), "fm", tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_fewer_row_groups_than_workers_says_what_to_change(planted, tmp_path: Path) -> None:
    data = _copy(planted[0], tmp_path)
    for part in (data / "train").glob("*.parquet"):
        part.unlink()
    one_group = pq.read_table(planted[0] / "train").slice(0, 1000)
    pq.write_table(one_group, data / "train" / "part-0.parquet", row_group_size=1000)
    with pytest.raises(TrainError, match=r"1 row group\(s\) but .* 2 workers.*row_group_rows"):
        train(config(workers=2, batch_size=64), str(data), "fm", tmp_path / "run")


def test_cli_reports_refusal_and_exit_code(planted, tmp_path: Path) -> None:
    data = _copy(planted[0], tmp_path)
    (data / "_SUCCESS").unlink()
    cfg = write_config(tmp_path / "c.yaml")
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--config",
            str(cfg),
            "--data",
            str(data),
            "--model",
            "fm",
            "--output",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2
    assert "train failed:" in result.output and "_SUCCESS" in result.output


def test_register_without_a_raw_format_is_one_clear_line(planted, tmp_path: Path) -> None:
    """A planted dataset has no raw log format, so no raw-row model can be registered."""
    cfg = write_config(tmp_path / "c.yaml", epochs=1)
    args = ["train", "--config", str(cfg), "--data", str(planted[0]), "--model", "lr"]
    args += ["--output", str(tmp_path / "run"), "--register", "planted-lr"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "cannot register 'planted-lr'" in result.output
    assert "Traceback" not in result.output


# -- on the feature job's own output ---------------------------------------------------------


@pytest.mark.slow
def test_trains_on_the_feature_jobs_output(spark, tmp_path: Path) -> None:
    """The data contract end to end: Criteo-format log -> Spark feature job -> training."""
    from fm_spark.config import load_config
    from fm_spark.datagen import generate
    from fm_spark.features.job import featurize

    log = tmp_path / "day0.tsv"
    meta = generate(format="criteo", rows=20_000, seed=3, output=log, bad_fraction=0.001)
    overrides = ["output.row_group_rows=2000", "train.epochs=2", "train.batch_size=512"]
    overrides += ["train.device=cpu", "train.lr=0.003"]
    cfg = load_config("conf/criteo.yaml", overrides)
    summary = featurize(cfg, str(log), str(tmp_path / "features"), spark=spark)
    result = train(cfg, str(tmp_path / "features"), "ffm", tmp_path / "run")
    assert result["train_rows"] == summary["rows_written"]["train"]
    assert result["test"]["rows"] == summary["rows_written"]["test"]
    for key in METRICS:
        assert np.isfinite(result["test"][key]), key
    # 16k rows are far too few to approach the planted model (that takes millions), but
    # the main effects alone are worth clearly more than chance.
    assert 0.6 < result["test"]["auc"] < meta["oracle"]["auc"]
