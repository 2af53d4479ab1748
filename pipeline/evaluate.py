"""DVC stage `evaluate`: results/estimates vs the data/cache test tracks -> results/scores,
metrics/sdr.json, plots/sdr_per_target.csv, and an MLflow evaluation run under the training run."""

from pathlib import Path

from lightsaft import tracking
from lightsaft.data.cache import Cache
from lightsaft.evaluate import evaluate_tracks, per_track_sdr, write_metrics, write_sdr_plot
from lightsaft.stage import run_stage


def evaluate(params: dict, args) -> None:
    result = evaluate_tracks(
        Cache("data/cache"),
        "results/estimates",
        "results/scores",
        jobs=params["evaluate"]["jobs"],
        engine=params["evaluate"]["engine"],
        device=params["evaluate"]["device"],
    )
    print(result.summary.to_string(index=False, float_format="%.3f"))
    result.check()  # failed tracks: the others' scores are written, metrics and plot are not
    write_metrics("metrics/sdr.json", result.metrics)
    write_sdr_plot("plots/sdr_per_target.csv", result.summary)
    child = tracking.log_evaluation(
        "models/mlflow_run.json",
        params,
        result.metrics,
        [Path("results/scores/summary.csv"), Path("results/scores/scores.csv")],
        per_track=per_track_sdr(result.scores).reset_index(),
    )
    print(f"MLflow: evaluation run {child} under the training run")


if __name__ == "__main__":
    run_stage("evaluate", evaluate)
