"""``seconds_to_best``: the time a run took to reach the quality it reports."""

from fm_spark.train.run import seconds_to_best


def _summary(best: int, epochs: list[float]) -> dict:
    return {
        "best_epoch": best,
        "history": [
            {"epoch": i + 1, "seconds": s - 0.5, "epoch_seconds": s} for i, s in enumerate(epochs)
        ],
    }


def test_the_patience_epochs_after_the_best_do_not_count():
    assert seconds_to_best(20.0, _summary(2, [5.0, 5.0, 4.0, 4.0])) == 12.0


def test_a_run_whose_last_epoch_is_best_took_all_its_time():
    assert seconds_to_best(20.0, _summary(4, [5.0, 5.0, 4.0, 4.0])) == 20.0


def test_history_from_an_older_checkpoint_falls_back_to_step_seconds():
    summary = {
        "best_epoch": 1,
        "history": [{"epoch": 1, "seconds": 3.0}, {"epoch": 2, "seconds": 3.0}],
    }
    assert seconds_to_best(10.0, summary) == 7.0
