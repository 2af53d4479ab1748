"""DVC stage `report`: scores, estimates, training curves and weights -> results/report (+ MLflow)."""

import lightsaft.environment  # noqa: F401  (first: without our packages, one line instead of a traceback)
from lightsaft import layout
from lightsaft.data.cache import Cache
from lightsaft.report.results import build_report
from lightsaft.stage import run_stage
from lightsaft.tracking.records import log_report


def main(params: dict, args) -> None:
    cache = Cache(layout.CACHE)
    out = build_report(
        layout.REPORT,
        cache=cache,
        scores_dir=layout.SCORES,
        estimates_dir=layout.ESTIMATES,
        curves_csv=layout.TRAIN_CURVES,
        train_metrics=layout.TRAIN_METRICS,
        model_params=params["model"],
        dataset=cache.manifest["source"],
        **params["report"],
    )
    print(f"report: {out / 'index.html'}")
    log_report(layout.RUN_FILE, out)


if __name__ == "__main__":
    run_stage("report", main)
