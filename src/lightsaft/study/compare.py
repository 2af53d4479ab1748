"""Compare the points of a study: one table row per experiment, mean and spread over seeds per
point, and paired per-track statistics of every point against the study's reference point.

Everything is read from the experiments' git commits (``metrics/*.json``, ``metrics/per_track_sdr.csv``,
``params.yaml``, ``models/mlflow_run.json`` are git-tracked outputs), so the comparison can be
rebuilt at any time, also for a study whose queue was finished in several sittings. The tables
and figures go to ``results/ablations/<study>/`` (:mod:`.tables`, :mod:`.figures`) and to the
study's MLflow run (:mod:`lightsaft.tracking.study_run`).
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from ..paths import write_text_atomic
from ..spectral import TARGETS
from ..tracking import store
from ..tracking.study_run import log_study
from . import figures, tables
from .experiments import experiment_refs, read_from_experiment
from .stats import StatsError, StudyStatistics, compare_points
from .studies import Study

SDR_KINDS = ("sdr", "sdr_mdx", "si_sdr")  # museval's (the headline), the MDX 2021 SDR, SI-SDR
TRAINING_COLUMNS = ["param_count", "peak_cpu_rss_gb", "peak_gpu_mem_gb", "best_val_loss", "steps"]
METRIC_COLUMNS = [*TRAINING_COLUMNS, *[f"{kind}_{t}" for kind in SDR_KINDS for t in (*TARGETS, "mean")]]
PER_TRACK_FILE = "metrics/per_track_sdr.csv"
COPIED = ("mlflow.source.", "mlflow.user", store.NOTE)  # MLflow's tags a restored run keeps


def collect(repo: Path, study: Study) -> pd.DataFrame:
    """One row per experiment of the study: its point, grid values and seed, status, training
    figures and test SDRs (museval's ``sdr_<target>``, ``sdr_mdx_<target>``, ``si_sdr_<target>``)."""
    refs = experiment_refs(repo)
    rows = []
    for point in study.points():
        row: dict[str, Any] = {"experiment": point.name, "point": point.label, "status": "missing"}
        row.update({k: point.overrides.get(k) for k in [*study.grid, "train.seed"] if k in point.overrides})
        if point.name in refs:
            ref = refs[point.name]
            train = read_from_experiment(repo, ref, "metrics/train.json") or {}
            sdr = read_from_experiment(repo, ref, "metrics/sdr.json") or {}
            row["status"] = "done" if sdr else "incomplete"
            row.update({k: train.get(k) for k in TRAINING_COLUMNS if k in train})
            row.update({k: sdr.get(k) for k in METRIC_COLUMNS if k not in TRAINING_COLUMNS})
            run = read_from_experiment(repo, ref, "models/mlflow_run.json") or {}
            row["mlflow_run_id"] = run.get("run_id")
        rows.append(row)
    return pd.DataFrame(rows)


def collect_tracks(repo: Path, table: pd.DataFrame) -> pd.DataFrame:
    """Per-track scores of every finished experiment (its ``metrics/per_track_sdr.csv``): one row
    per point, experiment, track and target with ``sdr`` (museval's), ``sdr_mdx``, ``si_sdr``.
    Experiments evaluated before that file existed have none (the comparison says so)."""
    refs = experiment_refs(repo)
    parts = []
    for row in table[table["status"] == "done"].itertuples():
        shown = subprocess.run(
            ["git", "show", f"{refs[row.experiment]}:{PER_TRACK_FILE}"], cwd=repo, capture_output=True, text=True
        )
        if shown.returncode == 0:
            scores = pd.read_csv(io.StringIO(shown.stdout))
            parts.append(scores.assign(point=row.point, experiment=row.experiment))
    columns = ["point", "experiment", "track", "target", *SDR_KINDS]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True).astype({"track": str, "target": str})[columns]


def aggregate(table: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Per study point (in the study's order) with finished experiments: its grid values, the
    number of seeds, and the mean and standard deviation over seeds of every figure (standard
    deviations only where some point has two seeds or more)."""
    done = table[table["status"] == "done"]
    metrics = [c for c in METRIC_COLUMNS if c in done and done[c].notna().any()]
    if done.empty:
        return pd.DataFrame(columns=["point", *study.grid, "seeds"])
    grouped = done.groupby("point", sort=False)[metrics]
    out = grouped.mean().add_suffix("_mean")
    seeds = grouped.size()
    if (seeds > 1).any():
        out = out.join(grouped.std(ddof=1).add_suffix("_std"))
        out = out[[f"{m}_{s}" for m in metrics for s in ("mean", "std")]]
    out.insert(0, "seeds", seeds)
    order = [label for label in study.labels() if label in out.index]
    out = out.reindex(order).reset_index()
    for i, key in enumerate(study.grid):
        out.insert(1 + i, key, [study.grid_values(label).get(key) for label in out["point"]])
    return out


def statistics(per_track: pd.DataFrame, study: Study) -> tuple[StudyStatistics | None, str]:
    """Paired statistics of the points against the study's reference (default: its first point
    that has per-track scores), or None and why not."""
    points = [label for label in study.labels() if label in set(per_track["point"])]
    if len(points) < 2:
        return None, f"paired statistics need per-track scores of two points or more ({len(points)} so far)"
    reference = study.reference or points[0]
    if reference not in points:
        return None, f"the reference point {reference} has no per-track scores yet: no paired statistics"
    scores = per_track.rename(columns={"experiment": "seed"})[["point", "seed", "track", "target", "sdr"]]
    scores = scores.set_index("point").loc[points].reset_index()  # the study's order
    try:
        return compare_points(scores, reference), ""
    except StatsError as e:
        return None, f"no paired statistics: {e}"


def compare_study(repo: Path, study: Study, out_dir: Path, experiment: str) -> dict[str, Path]:
    """The whole comparison: collect the experiments, give every finished point its MLflow run,
    write the tables and figures to ``out_dir``, and record them on the study's MLflow run in
    ``experiment``. Returns the files written, by kind."""
    table = collect(repo, study)
    ensure_mlflow_runs(repo, table, experiment)
    per_track = collect_tracks(repo, table)
    summary = aggregate(table, study)
    stats, why = statistics(per_track, study)
    paths = tables.write_tables(out_dir, table, summary, per_track, stats)
    paths.update(figures.write_figures(out_dir, study, summary, per_track, stats))
    paths["markdown"] = out_dir / "summary.md"
    files = sorted(p.name for p in paths.values() if p != paths["markdown"])
    write_text_atomic(paths["markdown"], tables.markdown(study, table, summary, stats, why, files))
    recorded = {
        "points": table,
        "summary": pd.read_csv(paths["summary"]),
        **({"differences": stats.differences, "friedman": stats.friedman} if stats is not None else {}),
    }
    friedman = {} if stats is None else {f"friedman_p_{r.target}": r.p_value for r in stats.friedman.itertuples()}
    log_study(
        experiment,
        study.name,
        description=paths["markdown"].read_text(),
        tables=recorded,
        files=[paths[k] for k in sorted(paths)],
        tags={"reference": stats.reference if stats is not None else "", "study_file": str(study.path)},
        metrics={"points_done": float(len(summary)), **{k: v for k, v in friedman.items() if pd.notna(v)}},
    )
    return paths


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
    if sdr.get("sdr_mdx_mean") is not None and sdr.get("si_sdr_mean") is not None:
        lines.append(
            f"  whole-track SDRs, mean over tracks and targets: MDX 2021 SDR {sdr['sdr_mdx_mean']:.2f}, "
            f"SI-SDR {sdr['si_sdr_mean']:.2f} (computed differently: not comparable with museval's)"
        )
    report = None
    if run.get("run_id"):
        artifact_uri = store.client().get_run(run["run_id"]).info.artifact_uri
        if artifact_uri.startswith("file://"):
            report = Path(artifact_uri[len("file://") :]) / "report" / "index.html"
    lines += [
        "",
        f"report:   {report or 'in the MLflow run ' + str(run.get('run_id'))}",
        f"          (or `dvc exp apply {name}` puts results/report/index.html in the workspace)",
        "MLflow:   lightsaft ui   (it prints the link to each experiment's training runs; experiment "
        f"{run.get('experiment', '?')!r}, sort by test_sdr_vocals)",
        "DVC:      dvc exp show",
        f"songs:    lightsaft separate SONG... --model {name} --out separated --page",
        "          (stems of your own songs, and a page like the LightSAFT demo page to listen to them;",
        "          --model also takes an MLflow run or model: see `lightsaft separate --help`)",
    ]
    return "\n".join(lines)
