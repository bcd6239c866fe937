"""``fm-spark tune``: nested MLflow trials, the overlay ``train --params`` applies, resume, and
refused range files -- on the planted dataset, 1-2 epochs a trial."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fm_spark.cli import main
from fm_spark.config import ConfigError
from fm_spark.tune import load_ranges, tune
from tests.train_support import config, one_torch_thread, planted, write_config  # noqa: F401

RANGES = {
    "metric": "auc",
    "seed": 3,
    "startup_trials": 1,
    "models": {
        "fm": {
            "lr": {"low": 0.005, "high": 0.05, "log": True},
            "l2_embed": {"low": 1.0e-7, "high": 1.0e-4, "log": True},
            "embed_dim": {"choices": [4, 6]},
            "batch_size": {"choices": [768, 1024]},
        }
    },
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from fm_spark.tracking import configure

    root = tmp_path_factory.mktemp("tune-mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return configure(uri)


@pytest.fixture(scope="module")
def study(planted, store, tmp_path_factory):  # noqa: F811
    data, _ = planted
    root = tmp_path_factory.mktemp("tune")
    ranges = root / "tune.yaml"
    ranges.write_text(yaml.safe_dump(RANGES), encoding="utf-8")
    cfg = config(epochs=2)
    out = root / "out"
    first = tune(cfg, str(data), "fm", load_ranges(ranges), trials=2, output=out)
    return cfg, data, ranges, out, first


def _children(parent_id: str) -> list:
    from fm_spark.tracking import client

    c = client()
    exp = c.get_run(parent_id).info.experiment_id
    return c.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_trials_are_nested_runs_and_the_best_is_an_overlay(study, store):
    from fm_spark.tracking import client

    _, _, _, out, result = study
    assert sum(result["trials"].values()) == 2
    assert result["trials"]["complete"] >= 1
    children = _children(result["mlflow_parent_run_id"])
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == ["trial-0", "trial-1"]
    for r in children:
        assert {"train.lr", "train.l2_embed", "models.fm.embed_dim", "train.batch_size"} <= set(
            r.data.params
        )
    assert (out / "trial-000").is_dir() and (out / "trial-001").is_dir()
    overlay = yaml.safe_load(Path(result["params_file"]).read_text(encoding="utf-8"))
    best = result["best_params"]
    assert overlay["train"]["lr"] == best["train.lr"]
    assert overlay["models"]["fm"]["embed_dim"] == best["models.fm.embed_dim"]
    parent = client().get_run(result["mlflow_parent_run_id"])
    assert parent.data.tags["best.train.lr"] == str(best["train.lr"])
    assert f"best_valid_{RANGES['metric']}" in parent.data.metrics


def test_train_params_applies_the_overlay(study, tmp_path):
    _, data, _, _, result = study
    cfg_path = write_config(tmp_path / "planted.yaml", epochs=1)
    run_dir = tmp_path / "run"
    args = ["train", "--config", str(cfg_path), "--data", str(data), "--model", "fm"]
    args += ["--params", result["params_file"], "--output", str(run_dir)]
    got = CliRunner().invoke(main, [*args, "--set", "train.l2_linear=0.001"])
    assert got.exit_code == 0, got.output
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    best = result["best_params"]
    assert resolved["models"]["fm"]["embed_dim"] == best["models.fm.embed_dim"]
    assert resolved["train"]["l2_embed"] == pytest.approx(best["train.l2_embed"])
    assert resolved["train"]["l2_linear"] == 0.001  # --set still applies, after --params


def test_a_rerun_with_more_trials_resumes_the_study(study):
    import optuna

    cfg, data, ranges, out, first = study
    storage = first["storage"]
    before = optuna.load_study(study_name=first["study"], storage=storage).trials
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trial-00[01]/config.yaml")}
    again = tune(cfg, str(data), "fm", load_ranges(ranges), trials=3, output=out)
    after = optuna.load_study(study_name=first["study"], storage=storage).trials
    assert len(after) == len(before) + 1 and again["trials_run"] == 1
    assert [t.params for t in after[:2]] == [t.params for t in before]
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert again["mlflow_parent_run_id"] == first["mlflow_parent_run_id"]
    assert len(_children(first["mlflow_parent_run_id"])) == 3
    same = tune(cfg, str(data), "fm", load_ranges(ranges), trials=3, output=out)
    assert same["trials_run"] == 0


@pytest.mark.parametrize(
    ("models", "says"),
    [
        ({"lr": {"embed_dim": {"choices": [4]}}}, "lr has no embeddings"),
        ({"fm": {"lr": {"low": 0.1, "high": 0.01}}}, "must be below high"),
        ({"fm": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log range needs low > 0"),
        ({"fm": {"learning_rate": {"low": 0.1, "high": 1}}}, "unknown key"),
        ({"fm": {"batch_size": {"choices": []}}}, "batch_size"),
    ],
)
def test_a_bad_ranges_file_is_a_config_error(tmp_path, models, says):
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid tune ranges") as err:
        load_ranges(path)
    assert says in str(err.value)


def test_the_cli_refuses_bad_ranges_before_training(tmp_path):
    cfg_path = write_config(tmp_path / "planted.yaml")
    ranges = tmp_path / "tune.yaml"
    ranges.write_text(yaml.safe_dump({"models": {"lr": {"lr": {"low": 1, "high": 0.5}}}}))
    args = ["tune", "--config", str(cfg_path), "--data", str(tmp_path / "nowhere")]
    got = CliRunner().invoke(
        main, [*args, "--model", "lr", "--trials", "2", "--ranges", str(ranges)]
    )
    assert got.exit_code == 2 and "invalid tune ranges" in got.output
    only_fm = tmp_path / "fm.yaml"
    only_fm.write_text(yaml.safe_dump({"models": {"fm": {"lr": {"low": 0.01, "high": 0.1}}}}))
    got = CliRunner().invoke(
        main, [*args, "--model", "lr", "--trials", "2", "--ranges", str(only_fm)]
    )
    assert got.exit_code == 2 and "no ranges for model 'lr'" in got.output
    missing = tmp_path / "x.yaml"
    got = CliRunner().invoke(
        main, [*args, "--model", "fm", "--trials", "1", "--ranges", str(missing)]
    )
    assert got.exit_code == 2 and "does not exist" in got.output


def test_the_shipped_ranges_validate():
    spec = load_ranges("conf/tune.yaml")
    assert set(spec.models) == {"lr", "poly2", "fm", "ffm", "fwfm"}
    assert spec.models["lr"].embed_dim is None and spec.models["ffm"].embed_dim is not None


def test_a_trial_worse_than_the_median_is_stopped_and_marked(tmp_path):
    """The pruning callback on its own: a real study with one finished trial at AUC 0.8; a
    trial reporting 0.6 at the same epoch is pruned and leaves its marker for the tuner."""
    import optuna

    from fm_spark.tune import PruneOnEpoch
    from fm_spark.tune.study import PRUNED_FILE, TrialPruned

    storage = f"sqlite:///{tmp_path}/optuna.db"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = study.ask()
    done.report(0.8, 1)
    study.tell(done, 0.8)
    trial = study.ask()
    cb = PruneOnEpoch(storage, "s", trial._trial_id, "auc", pruner, str(tmp_path))
    with pytest.raises(TrialPruned):
        cb.on_epoch_end(1, {"epoch": 1, "valid": {"auc": 0.6, "logloss": 0.6}})
    assert (tmp_path / PRUNED_FILE).exists()
    good = study.ask()
    PruneOnEpoch(storage, "s", good._trial_id, "auc", pruner, str(tmp_path / "x")).on_epoch_end(
        1, {"epoch": 1, "valid": {"auc": 0.9}}
    )


def test_a_trial_left_running_by_a_killed_tuner_is_tried_again(planted, store, tmp_path):  # noqa: F811
    import optuna
    from optuna.trial import TrialState

    from fm_spark.tune import study_storage

    data, _ = planted
    ranges = tmp_path / "tune.yaml"
    ranges.write_text(yaml.safe_dump(RANGES), encoding="utf-8")
    cfg = config(epochs=1).model_copy(update={"name": "planted-killed"})
    storage = study_storage(store, tmp_path)
    study = optuna.create_study(
        study_name="planted-killed-fm", storage=storage, direction="maximize"
    )
    left = study.ask()  # what a killed tuner leaves: a RUNNING trial with its parameters
    left.suggest_float("lr", 0.005, 0.05, log=True)
    left.suggest_categorical("batch_size", [768, 1024])
    result = tune(cfg, str(data), "fm", load_ranges(ranges), trials=1, output=tmp_path / "out")
    trials = optuna.load_study(study_name="planted-killed-fm", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params["lr"] == left.params["lr"]
    assert result["trials"] == {"complete": 1, "pruned": 0, "fail": 1}


def test_a_params_file_takes_dotted_keys_and_sections(tmp_path):
    from fm_spark.config import load_config, load_params

    cfg_path = write_config(tmp_path / "planted.yaml")
    mixed = tmp_path / "p.yaml"
    mixed.write_text("train.lr: 0.02\nmodels:\n  fm: {embed_dim: 12}\n", encoding="utf-8")
    cfg = load_config(cfg_path, ["train.lr=0.03"], load_params(mixed))
    assert cfg.train.lr == 0.03 and cfg.models["fm"]["embed_dim"] == 12
    assert cfg.models["ffm"]["embed_dim"] == 4  # sections merge, they do not replace
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train: {learning_rate: 0.1}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(cfg_path, [], load_params(unknown))
