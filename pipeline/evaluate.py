"""DVC stage `evaluate`: results/estimates vs the data/cache test tracks -> results/scores,
metrics/sdr.json, metrics/per_track_sdr.csv, plots/sdr_per_target.csv, and an MLflow evaluation
run under the training run."""

import lightsaft.environment  # noqa: F401  (first: without our packages, one line instead of a traceback)
from lightsaft import layout
from lightsaft.data.cache import Cache
from lightsaft.evaluation.engines import evaluate_tracks
from lightsaft.evaluation.scores import (
    CLIPPED_CSV,
    readable,
    track_table,
    write_metrics,
    write_scores,
    write_sdr_plot,
    write_track_table,
)
from lightsaft.stage import run_stage
from lightsaft.tracking import records, store


def main(params: dict, args) -> None:
    rt, options = params["runtime"]["evaluate"], params["evaluate"]
    cache = Cache(layout.CACHE)
    result = evaluate_tracks(
        cache,
        layout.ESTIMATES,
        jobs=rt["jobs"],
        engine=options["engine"],
        device=rt["device"],
        tracks=options["tracks"],
    )
    write_scores(result, layout.SCORES)
    print(readable(result.summary).to_string(index=False))
    for definition, metrics in result.summary.groupby("definition", sort=False)["metric"]:
        print(f"  {', '.join(dict.fromkeys(metrics))}: {definition}")
    result.check()  # failed tracks: the others' scores are written, metrics and plots are not
    write_metrics(layout.SDR_METRICS, result.metrics)
    write_track_table(layout.PER_TRACK_SDR, result.scores)
    write_sdr_plot(layout.SDR_PLOT, result.summary)
    child = records.log_evaluation(
        layout.RUN_FILE,
        params,
        result.metrics,
        [layout.SCORES / "summary.csv", layout.SCORES / "scores.csv", layout.PER_TRACK_SDR]
        + [layout.SCORES / CLIPPED_CSV] * (result.clipped is not None),
        per_track=track_table(result.scores),
        dataset=store.dataset_of(cache),
    )
    print(f"MLflow: evaluation run {child} under the training run")


if __name__ == "__main__":
    run_stage("evaluate", main)
