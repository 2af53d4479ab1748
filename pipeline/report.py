"""DVC stage `report`: scores, estimates, training curves and weights -> results/report (+ MLflow)."""

from lightsaft.data.cache import Cache
from lightsaft.report import build_report
from lightsaft.stage import run_stage
from lightsaft.tracking import log_report


def report(params: dict, args) -> None:
    cache = Cache("data/cache")
    out = build_report(
        "results/report",
        cache=cache,
        scores_dir="results/scores",
        estimates_dir="results/estimates",
        curves_csv="plots/train_curves.csv",
        train_metrics="metrics/train.json",
        weights="models/weights.pt",
        dataset=cache.manifest["source"],
        **params["report"],
    )
    print(f"report: {out / 'index.html'}")
    log_report("models/mlflow_run.json", out)


if __name__ == "__main__":
    run_stage("report", report)
