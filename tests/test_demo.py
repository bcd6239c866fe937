"""The demo on a small log: refused arguments, a rerun from another directory, the notebook run
on its output, and small-data training (2 workers on a 20K-row log) on its features."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fm_spark.cli import main
from fm_spark.demo import MARKER, MIN_ROWS, run_demo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
# Few epochs: these tests check behaviour, the demo's quality is measured by `make demo`.
QUICK = ["train.epochs=2", "train.device=cpu"]


@pytest.fixture(scope="module")
def demo_dir(spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("demo") / "work"
    result = run_demo(workdir, rows=MIN_ROWS, model="ffm", overrides=QUICK)
    return workdir, result


def test_bad_arguments_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    runner = CliRunner()
    work = tmp_path / "w"
    small = runner.invoke(main, ["demo", "--workdir", str(work), "--rows", "5000"])
    assert small.exit_code == 2 and f"at least {MIN_ROWS:,} rows" in small.output
    model = runner.invoke(main, ["demo", "--workdir", str(work), "--model", "xyz"])
    assert model.exit_code == 2 and "xyz" in model.output
    assert not work.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not the demo's")
    refused = runner.invoke(main, ["demo", "--workdir", str(foreign), "--rows", str(MIN_ROWS)])
    assert refused.exit_code == 2 and MARKER in refused.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_demo_trains_the_model_and_a_baseline(demo_dir) -> None:
    workdir, result = demo_dir
    assert (workdir / MARKER).exists()
    for model in ("ffm", "lr"):
        assert (workdir / "runs" / model / "model.pt").exists()
    assert result["train"]["test"]["auc"] > 0.6 and result["baseline"]["model"] == "lr"
    # Every malformed line the generator planted was quarantined under its own reason.
    quarantined = result["featurize"]["quarantined_by_reason"]
    assert {k: quarantined[k] for k in result["generate"]["bad_lines"]} == result["generate"][
        "bad_lines"
    ]


def test_second_demo_replaces_its_runs_from_another_directory(
    demo_dir, tmp_path: Path, monkeypatch
) -> None:
    workdir, first = demo_dir
    monkeypatch.chdir(tmp_path)  # not the repository: the config is found from the package
    args = ["demo", "--workdir", str(workdir), "--rows", str(MIN_ROWS), "--model", "lr"]
    result = CliRunner().invoke(main, [*args, *(f"--set={o}" for o in QUICK)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((workdir / "runs" / "lr" / "metrics.json").read_text())
    assert metrics["train_seconds"] != first["baseline"]["train_seconds"]  # a new run
    assert (workdir / "runs" / "ffm" / "model.pt").exists()  # the other run is left alone


def test_notebook_runs_top_to_bottom(demo_dir) -> None:
    import nbformat
    from nbclient import NotebookClient

    workdir, _ = demo_dir
    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    os.environ["FM_SPARK_DEMO_DIR"] = str(workdir)
    try:
        NotebookClient(nb, timeout=300, resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        del os.environ["FM_SPARK_DEMO_DIR"]
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "planted model AUC" in outputs and "mean predicted click rate" in outputs


def test_small_log_has_row_groups_for_workers(demo_dir) -> None:
    from fm_spark.data.reader import split_layout
    from fm_spark.features.job import MIN_TRAIN_ROW_GROUPS

    workdir, _ = demo_dir
    layout = split_layout((workdir / "features" / "train").resolve().as_uri())
    assert layout.num_row_groups >= MIN_TRAIN_ROW_GROUPS


def test_two_workers_on_a_20k_row_log_just_work(demo_dir, tmp_path: Path) -> None:
    workdir, _ = demo_dir
    args = ["train", "--config", str(ROOT / "conf" / "context.yaml"), "--model", "fm"]
    args += ["--data", str(workdir / "features"), "--output", str(tmp_path / "run")]
    args += ["--workers", "2", "--set", "train.epochs=1", "--set", "train.device=cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["steps_per_epoch"] >= 20
    fitted = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert fitted["batch_size"] < 2048 and fitted["batch_size"] % 2 == 0
