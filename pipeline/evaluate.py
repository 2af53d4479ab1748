"""DVC stage `evaluate`: results/estimates vs the data/cache test tracks -> results/scores,
metrics/sdr.json, plots/sdr_per_target.csv, and an MLflow evaluation run under the training run."""

import lightsaft.environment  # noqa: F401  (first: without our packages, one line instead of a traceback)
from lightsaft import layout
from lightsaft.data.cache import Cache
from lightsaft.evaluation.engines import evaluate_tracks
from lightsaft.evaluation.scores import per_track_sdr, readable, write_metrics, write_scores, write_sdr_plot
from lightsaft.stage import run_stage
from lightsaft.tracking import records, store


def main(params: dict, args) -> None:
    rt = params["runtime"]["evaluate"]
    cache = Cache(layout.CACHE)
    result = evaluate_tracks(
        cache, layout.ESTIMATES, jobs=rt["jobs"], engine=params["evaluate"]["engine"], device=rt["device"]
    )
    write_scores(result, layout.SCORES)
    print(readable(result.summary).to_string(index=False))
    result.check()  # failed tracks: the others' scores are written, metrics and plot are not
    write_metrics(layout.SDR_METRICS, result.metrics)
    write_sdr_plot(layout.SDR_PLOT, result.summary)
    child = records.log_evaluation(
        layout.RUN_FILE,
        params,
        result.metrics,
        [layout.SCORES / "summary.csv", layout.SCORES / "scores.csv"],
        per_track=per_track_sdr(result.scores).reset_index(),
        dataset=store.dataset_of(cache),
    )
    print(f"MLflow: evaluation run {child} under the training run")


if __name__ == "__main__":
    run_stage("evaluate", main)
