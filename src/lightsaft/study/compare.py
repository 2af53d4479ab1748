"""Compare the points of a study: one table row per experiment, mean and spread over seeds.

Everything is read from the experiments' git commits (``metrics/*.json``, ``params.yaml``,
``models/mlflow_run.json`` are git-tracked outputs), so the table can be rebuilt at any time,
also for a study whose queue was finished in several sittings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..spectral import TARGETS
from ..tracking import store
from .experiments import experiment_refs, read_from_experiment
from .studies import Study

METRIC_COLUMNS = [
    "param_count",
    "peak_cpu_rss_gb",
    "peak_gpu_mem_gb",
    "best_val_loss",
    "steps",
    *[f"sdr_{t}" for t in TARGETS],
    "sdr_mean",
]
COPIED = ("mlflow.source.", "mlflow.user", store.NOTE)  # MLflow's tags a restored run keeps


def collect(repo: Path, study: Study) -> pd.DataFrame:
    """One row per finished point: its grid values, training figures and test SDR."""
    refs = experiment_refs(repo)
    rows = []
    for point in study.points():
        row: dict[str, Any] = {"experiment": point.name, "status": "missing"}
        row.update({k: point.overrides.get(k) for k in [*study.grid, "train.seed"] if k in point.overrides})
        if point.name in refs:
            ref = refs[point.name]
            train = read_from_experiment(repo, ref, "metrics/train.json") or {}
            sdr = read_from_experiment(repo, ref, "metrics/sdr.json") or {}
            row["status"] = "done" if sdr else "incomplete"
            row.update({k: train.get(k) for k in METRIC_COLUMNS if k in train})
            row.update({f"sdr_{t}": sdr.get(f"sdr_{t}") for t in [*TARGETS, "mean"]})
            run = read_from_experiment(repo, ref, "models/mlflow_run.json") or {}
            row["mlflow_run_id"] = run.get("run_id")
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(table: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Mean and standard deviation over seeds for every grid point."""
    done = table[table["status"] == "done"]
    keys = [k for k in study.grid if k in done]
    metrics = [c for c in METRIC_COLUMNS if c in done and done[c].notna().any()]
    if done.empty or not keys:
        return done
    grouped = done.groupby(keys, dropna=False)[metrics]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    out["seeds"] = grouped.size()
    return out.reset_index()


def ensure_mlflow_runs(repo: Path, table: pd.DataFrame, experiment: str) -> None:
    """Every finished point gets an MLflow run tagged with its experiment name.

    When DVC restored a point from its run cache nothing ran, so nothing was logged: the point
    then gets a run that copies what the run that made those outputs records: params, metrics,
    source tags and description, training data, and its logged model (as this run's output).
    """
    client = store.client()
    for row in table[table["status"] == "done"].itertuples():
        found = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.dvc_experiment = '{row.experiment}'",
            max_results=1,
        )
        if found or not row.mlflow_run_id:
            continue
        source = client.get_run(row.mlflow_run_id)
        exp_id = store.experiment_id(client, experiment)
        run = client.create_run(
            exp_id,
            run_name=row.experiment,
            tags={
                **{k: v for k, v in source.data.tags.items() if not k.startswith("mlflow.") or k.startswith(COPIED)},
                "dvc_experiment": row.experiment,
                "restored_from_run_cache": row.mlflow_run_id,
            },
        )
        store.log_params(client, run.info.run_id, source.data.params)
        store.log_metrics(client, run.info.run_id, source.data.metrics)
        if source.inputs and source.inputs.dataset_inputs:
            client.log_inputs(run.info.run_id, datasets=source.inputs.dataset_inputs)
        if source.outputs and source.outputs.model_outputs:
            client.log_outputs(run.info.run_id, source.outputs.model_outputs)
        client.set_terminated(run.info.run_id, "FINISHED")


def write_comparison(table: pd.DataFrame, study: Study, out_dir: Path) -> dict[str, Path]:
    """``points.csv``, ``summary.csv``, ``summary.md`` and ``sdr.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = aggregate(table, study)
    paths = {
        "points": out_dir / "points.csv",
        "summary": out_dir / "summary.csv",
        "markdown": out_dir / "summary.md",
        "plot": out_dir / "sdr.png",
    }
    table.to_csv(paths["points"], index=False)
    summary.to_csv(paths["summary"], index=False)
    paths["markdown"].write_text(
        f"# Study `{study.name}`\n\n## Per point\n\n{table.to_markdown(index=False, floatfmt='.3f')}\n\n"
        f"## Mean and standard deviation over seeds\n\n{summary.to_markdown(index=False, floatfmt='.3f')}\n"
    )
    _plot(summary, study, paths["plot"])
    return paths


def _plot(summary: pd.DataFrame, study: Study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(study.grid)
    if not keys:  # explicit points only: test SDR per target, one group of bars per finished point
        _plot_points(summary, study, path, plt)
        return
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(5 * max(len(keys), 1), 3.6), squeeze=False)
    if summary.empty or "sdr_mean_mean" not in summary:
        axes[0][0].text(0.5, 0.5, "no finished points", ha="center")
    else:
        for ax, key in zip(axes[0], keys):
            others = [k for k in keys if k != key]
            groups = summary.groupby(others) if others else [((), summary)]
            for label, group in groups:
                group = group.sort_values(key)
                name = ", ".join(
                    f"{k.split('.')[-1]}={v}" for k, v in zip(others, label if isinstance(label, tuple) else (label,))
                )
                ax.errorbar(
                    group[key],
                    group["sdr_mean_mean"],
                    yerr=group.get("sdr_mean_std"),
                    marker="o",
                    capsize=3,
                    label=name or None,
                )
            if pd.api.types.is_numeric_dtype(summary[key]) and (summary[key] > 0).all():
                ax.set_xscale("log", base=2)
            ax.set_xlabel(key)
            ax.set_ylabel("mean test SDR (dB)")
            if others:
                ax.legend(fontsize=7)
    fig.suptitle(f"{study.name}: test SDR (mean over targets; bars: std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_points(table: pd.DataFrame, study: Study, path: Path, plt) -> None:
    done = table[table["status"] == "done"] if "status" in table else table
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(done) + 2), 3.6))
    if done.empty:
        ax.text(0.5, 0.5, "no finished points", ha="center")
    for i, target in enumerate(TARGETS):
        column = f"sdr_{target}"
        if column in done:
            ax.bar([j + 0.2 * (i - 1.5) for j in range(len(done))], done[column], width=0.2, label=target)
    ax.set_xticks(range(len(done)), [name.removeprefix(f"{study.name}-") for name in done["experiment"]],
                  rotation=20, ha="right", fontsize=7)  # fmt: skip
    ax.set_ylabel("test SDR (dB)")
    if not done.empty:
        ax.legend(fontsize=7)
    fig.suptitle(f"{study.name}: test SDR per target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def experiment_summary(repo: Path, name: str) -> str:
    """What a user wants after a run: SDR per target, where the report is, how to browse runs."""
    ref = experiment_refs(repo).get(name)
    if ref is None:
        return f"experiment {name} not found (dvc exp show lists the experiments)"
    sdr = read_from_experiment(repo, ref, "metrics/sdr.json") or {}
    run = read_from_experiment(repo, ref, "models/mlflow_run.json") or {}
    lines = [
        f"\nExperiment {name}: test SDR (museval, median over frames then tracks, dB)",
        f"  {'target':<8} {'model':>7} {'mixture':>8} {'gain':>6}",
    ]
    for target in TARGETS:
        est, base = sdr.get(f"sdr_{target}"), sdr.get(f"baseline_sdr_{target}")
        if est is not None and base is not None:
            lines.append(f"  {target:<8} {est:7.2f} {base:8.2f} {est - base:+6.2f}")
    if sdr.get("sdr_mean") is not None:
        lines.append(f"  {'mean':<8} {sdr['sdr_mean']:7.2f}")
    report, weights = None, None
    if run.get("run_id"):
        artifact_uri = store.client().get_run(run["run_id"]).info.artifact_uri
        if artifact_uri.startswith("file://"):
            artifacts = Path(artifact_uri[len("file://") :])
            report, weights = artifacts / "report" / "index.html", artifacts / "model" / "weights.pt"
    lines += [
        "",
        f"report:   {report or 'in the MLflow run ' + str(run.get('run_id'))}",
        f"          (or `dvc exp apply {name}` puts results/report/index.html in the workspace)",
        "MLflow:   make ui   (it prints the link to each experiment's training runs; experiment "
        f"{run.get('experiment', '?')!r}, sort by test_sdr_vocals)",
        "DVC:      dvc exp show",
        f"songs:    lightsaft separate SONG... --model {weights or 'models/weights.pt'} --out separated --page",
        "          (stems of your own songs, and a page like the LightSAFT demo page to listen to them)",
    ]
    return "\n".join(lines)
