"""Every train is one MLflow run; the feature job logs its own; resume continues the run."""

from __future__ import annotations

import json


def _run(registered, model="fm"):
    from fm_spark.tracking import client

    return client().get_run(registered[model]["mlflow_run_id"])


def test_training_run_params_metrics_artifacts(registered, ctr_data):
    from fm_spark.tracking import client

    run = _run(registered)
    c = client()
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.name == "criteo"
    p = run.data.params
    assert p["model"] == "fm" and p["train.lr"] == "0.01" and p["train.epochs"] == "1"
    assert p["model.embed_dim"] == "16" and p["data_dir"] == str(ctr_data.features)
    for key in ("config_hash", "feature_map_hash", "workers", "device", "train.optimizer"):
        assert key in p
    m = run.data.metrics
    assert 0.0 < m["test_auc"] < 1.0 and m["test_logloss"] > 0 and "valid_auc" in m
    history = c.get_metric_history(run.info.run_id, "epoch/train_loss")
    assert [h.step for h in history] == [1]
    assert [h.step for h in c.get_metric_history(run.info.run_id, "epoch/valid_logloss")] == [1]
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "feature_map.json", "metrics.json", "plots"} <= names
    plots = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    assert plots == {
        "plots/learning_curves.png",
        "plots/roc_test.png",
        "plots/calibration_test.png",
    }
    # the data it learned from, with a digest
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == run.data.tags["fm_spark.data_digest"]
    assert inputs[0].tags[0].value == "training"
    assert (ctr_data.root / "runs" / "fm" / "mlflow_run.json").exists()


def test_featurize_run_and_shared_digest(registered, ctr_data):
    from fm_spark.tracking import client, log_featurize_run

    summary = json.loads((ctr_data.features / "summary.json").read_text())
    run_id = log_featurize_run(summary, str(ctr_data.features))
    run = client().get_run(run_id)
    assert run.data.metrics["rows_read"] == summary["rows_read"]
    assert run.data.metrics["rows_test"] == summary["rows_written"]["test"]
    for reason, n in summary["quarantined_by_reason"].items():
        assert run.data.metrics[f"quarantined_{reason}"] == n
    assert (
        run.data.tags["fm_spark.data_digest"] == _run(registered).data.tags["fm_spark.data_digest"]
    )


def test_resume_continues_the_same_run(registered, ctr_data):
    from fm_spark.tracking import train_tracked

    first = registered["lr"]
    again = train_tracked(
        ctr_data.config(),
        str(ctr_data.features),
        "lr",
        ctr_data.root / "runs" / "lr",
        resume=True,
    )
    assert again["mlflow_run_id"] == first["mlflow_run_id"]
    assert _run(registered, "lr").info.status == "FINISHED"


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    from fm_spark.tracking import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path}/x.db"
