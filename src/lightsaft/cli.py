"""``lightsaft`` command line: the tools a user runs by hand (the stages run from dvc.yaml)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

from . import environment  # noqa: F401  (first: without our packages, one line instead of a traceback)
from .config import load_params
from .errors import ConfigError, redact, reported
from .paths import project_root


def _parse_sets(items: list[str]) -> dict:
    """``--set model.dk=32`` values parsed as YAML (numbers, booleans, null, lists)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set model.dk=32")
        out[key] = yaml.safe_load(value)
    return out


def _model_summary(args: argparse.Namespace) -> int:
    from .model.summary import model_summary

    print(model_summary(load_params(args.params)["model"]))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .study.compare import experiment_summary
    from .study.queue import run_foreground
    from .study.studies import Point, load_study

    repo = project_root()
    study = load_study(args.study or repo / "experiments" / "demo.yaml", _parse_sets(args.set))
    point = Point(f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}", study.overrides)
    code = run_foreground(repo, point)
    if code != 0:
        print(
            f"error: the {study.name} pipeline failed (exit {code}); the stage output above says why", file=sys.stderr
        )
        return code
    print(experiment_summary(repo, point.name))
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from .study.compare import compare_study
    from .study.queue import run_queue
    from .study.studies import load_study

    repo = project_root()
    study = load_study(args.grid, _parse_sets(args.set))
    out_dir = repo / "results" / "ablations" / study.name
    points = study.points()
    cluster = _cluster_options(args)
    if not (args.status or args.compare_only):  # what the points not done yet will take, before any runs
        from .study import disk
        from .study.experiments import experiment_refs

        if cluster:
            from .study import slurm

            checked = slurm.check(repo, study, cluster)  # contradicting options, an unready repository: refused first
        projection = disk.project(repo, points, done=set(experiment_refs(repo)))
        print(projection.table())
        print(disk.check_space(repo, projection, args.force))
    # --- the SLURM executor (lightsaft.study.slurm); the local DVC queue below is the default
    if args.status or (cluster and not args.compare_only):
        from .study import slurm

        if args.status:
            print(slurm.status_report(slurm.status(repo, study), study))
            return 0
        print(f"study {study.name}: {len(points)} experiments, on SLURM")
        slurm.submit(repo, study, cluster, checked)
        again = ["lightsaft", "ablate", args.grid, *[f"--set={item}" for item in args.set]]
        print(f"\nfollow it:      {shlex.join([*again, '--status'])}")
        print(f"when it ends:   {shlex.join([*again, '--compare-only'])}")
        print("(the same command again submits the points that are missing or failed)")
        if not args.wait:
            return 0
        statuses = slurm.wait(repo, study)
        results = {s.name: "Success" if s.state == "done" else f"Failed: {s.detail}" for s in statuses}
        logs = {s.name: s.log for s in statuses if s.log}
    # ---
    else:
        print(f"study {study.name}: {len(points)} experiments, {args.jobs} at a time")
        results = {} if args.compare_only else run_queue(repo, points, args.jobs, out_dir / "logs")
        logs = {name: out_dir / "logs" / f"{name}.log" for name in results}
    experiment = study.overrides.get("mlflow.experiment") or load_params(repo / "params.yaml")["mlflow"]["experiment"]
    paths = compare_study(repo, study, out_dir, experiment)  # tables, figures, the study's MLflow run
    print("\n" + paths["markdown"].read_text())
    failed = [name for name, status in results.items() if status.startswith("Failed")]
    for name, status in results.items():
        log = logs.get(name)
        print(f"  {status:<24} {name}" + (f"   log: {log}" if log and log.exists() else ""))
    print(f"\ntables and plot: {out_dir}/  (points.csv, summary.csv, summary.md, sdr.png)")
    return 1 if failed else 0


SLURM_OPTIONS = ("partition", "time", "cpus_per_point", "mem_per_point", "gpus_per_point", "max_running", "sbatch",
                 "setup", "max_requeues", "wait")  # fmt: skip


def _cluster_options(args: argparse.Namespace):
    """``--executor slurm``: its options, checked; None for the local queue (which takes none of them)."""
    from .study.cluster import ClusterOptions, parse_mem, parse_sbatch, parse_time

    given = [f"--{name.replace('_', '-')}" for name in SLURM_OPTIONS if getattr(args, name) not in (None, [], False)]
    if args.executor != "slurm":
        if given:
            raise ConfigError(f"{', '.join(given)}: option(s) of --executor slurm (this study runs in the local queue)")
        return None
    if args.jobs != 1:
        raise ConfigError("--jobs sets the local queue's workers; on SLURM, --max-running limits the points at once")
    if args.time is None:
        raise ConfigError("--executor slurm needs --time, the job time limit (e.g. --time 24:00:00); a training "
                          "that needs longer is requeued and continues")  # fmt: skip
    return ClusterOptions(
        time_min=parse_time(args.time),
        partition=args.partition,
        cpus=args.cpus_per_point,
        mem_mb=parse_mem(args.mem_per_point) if args.mem_per_point else None,
        gpus=args.gpus_per_point,
        max_running=args.max_running,
        sbatch=parse_sbatch(args.sbatch),
        setup=tuple(args.setup),
        max_requeues=args.max_requeues,
    )


def _ui(args: argparse.Namespace) -> int:
    from .tracking import store

    uri = store.tracking_uri()
    if uri.split(":", 1)[0] in ("http", "https", "databricks"):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI is {redact(uri)}: that tracking server has its own "
            f"UI; open it in a browser (make ui serves a database: mlflow.db, or a SQL URI)"
        )
    mlflow_client = store.client()  # creates the database (WAL mode) if this is the first use
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"MLflow UI for {redact(uri)} at {base}  (Ctrl+C to stop)", flush=True)
    for experiment in store.training_experiments(mlflow_client):
        print(f"  training runs of {experiment.name!r}: {store.runs_view(base, experiment.experiment_id)}", flush=True)
    # The store URI goes through the environment: command lines (with any password) are public in `ps`.
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port), "--workers", "1"]
    return subprocess.call(cmd, env={**os.environ, "MLFLOW_BACKEND_STORE_URI": uri})


def _register(args: argparse.Namespace) -> int:
    from .tracking.models import register

    version = register(args.model, args.name)
    print(f"registered {version.source} as version {version.version} of {version.name!r} (see `lightsaft ui`, Models)")
    print(f"songs: lightsaft separate SONG... --model models:/{version.name}/{version.version} --out separated --page")
    return 0


def _separate(args: argparse.Namespace) -> int:
    from .devices import resolve_device
    from .report.params import REPORT
    from .report.song_page import Excerpt
    from .separation.params import OUTPUT, RUNTIME_SEPARATE, SEPARATE, check_protocol
    from .songs import Output, check_targets, open_model, separate_songs
    from .weights.published import default_min_trim

    where, label = "lightsaft separate", lambda key: "--" + key.replace("_", "-")
    targets = check_targets(args.targets.split(",") if args.targets is not None else None, args.two_stems)
    given = {"protocol": args.protocol, "overlap": args.overlap, "precision": args.precision}
    options = SEPARATE.validate({**given, "min_trim": args.min_trim or 0}, where, label)
    options.update(RUNTIME_SEPARATE.validate({"batch_size": args.batch_size, "device": args.device}, where, label))
    files = OUTPUT.validate({"format": args.format, "mp3_bitrate": args.mp3_bitrate}, where, label)
    output = Output(targets, args.two_stems, files["format"], files["mp3_bitrate"])
    page = None
    if args.page:  # checked before the model is downloaded or imported
        excerpt = {"excerpt_seconds": args.excerpt_seconds, "excerpt_offset": args.excerpt_offset}
        excerpt = REPORT.validate({**excerpt, "audio_format": args.audio_format}, where, label)
        page = Excerpt(excerpt["excerpt_seconds"], excerpt["excerpt_offset"], excerpt["audio_format"])
    resolve_device(options["device"])
    try:
        check_protocol(options, None, label)
        model = open_model(args.model)
        if args.min_trim is None:  # the official amount for this model
            options["min_trim"] = default_min_trim(model.published)
        check_protocol(options, model.model.params, label)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    failures, index = separate_songs(args.songs, model, args.out, output, options, page)
    if index is not None:
        print(f"page: {index}")
    if failures:
        print(f"error: {len(failures)} of {len(args.songs)} songs failed (see above)", file=sys.stderr)
    return 1 if failures else 0


def _import_official(args: argparse.Namespace) -> int:
    from .weights.published import import_official

    print(import_official(args.checkpoint, args.out, args.sha256, args.trust).summary())
    return 0


def _batch_size(text: str) -> int | str:
    return text if text == "auto" else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightsaft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model-summary", help="parameter count and per-layer shapes of the model config")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_model_summary)

    p = sub.add_parser("demo", help="run the whole pipeline offline on synthetic data (a DVC experiment)")
    p.add_argument("--study", help="overrides that make the demo (default: experiments/demo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override")
    p.set_defaults(func=_demo)

    _add_ablate(sub)

    p = sub.add_parser("ui", help="MLflow UI on the project's tracking database")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_ui)

    p = sub.add_parser("register", help="put a trained model (its MLflow logged model) in the MLflow model registry")
    p.add_argument(
        "model",
        metavar="RUN_OR_MODEL",
        help="a training or evaluation run id (or runs:/<run id>), a logged model id (m-..., models:/m-...), a "
        "registered version (models:/<name>/<version>, models:/<name>@<alias>) or a run record "
        "(models/mlflow_run.json)",
    )
    p.add_argument("--name", required=True, help="registered model name (created if new; else a new version)")
    p.set_defaults(func=_register)

    _add_separate(sub)

    p = sub.add_parser(
        "import-official",
        help="import an official LaSAFT/LightSAFT checkpoint (file or published name) as our weights file",
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT_OR_NAME",
        help="an official .ckpt, or lasaft_large_2019, lasaft_large_2020, lasaft_large_2021, lightsaft_small_2020",
    )
    p.add_argument("--out", help="weights file to write (default: .lightsaft/pretrained/<name>.pt)")
    p.add_argument("--sha256", metavar="HEX", help="the checkpoint's expected sha256 (pins it)")
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow full unpickling, which can run code: only for a file you trust that is refused otherwise",
    )
    p.set_defaults(func=_import_official)
    return parser


def _add_ablate(sub) -> None:
    """`lightsaft ablate`: the study, its executor, and the cluster options (never params)."""
    p = sub.add_parser(
        "ablate", help="run one DVC experiment per grid point (local DVC queue, or SLURM jobs), compare them"
    )
    p.add_argument("grid", help="study file, e.g. experiments/dk_num_tdfs.yaml")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="experiments at once (queue workers); on a multi-GPU machine each training "
        "takes a free GPU, so use the number of GPUs",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override")
    p.add_argument("--compare-only", action="store_true", help="only rebuild the comparison tables")
    p.add_argument(
        "--force",
        action="store_true",
        help="run even when the projected disk exceeds what is free where the DVC cache is (it says so)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: DVC's queue on this machine (default); slurm: one cluster job per point, submitted and "
        "left to run (see --status, --wait)",
    )
    p.add_argument("--status", action="store_true", help="each point: done, running, queued, failed (with its log)")
    slurm = p.add_argument_group("--executor slurm (README: studies on a SLURM cluster)")
    slurm.add_argument("--wait", action="store_true", help="wait until every point has ended, then compare")
    slurm.add_argument("--time", metavar="LIMIT", help="job time limit, e.g. 24:00:00 (longer trainings requeue)")
    slurm.add_argument("--partition", metavar="NAME")
    slurm.add_argument("--cpus-per-point", type=int, metavar="N", help="CPUs of a point, shared by its processes")
    slurm.add_argument("--mem-per-point", metavar="MEM", help="memory of a point, e.g. 64G (split over its nodes)")
    slurm.add_argument(
        "--gpus-per-point",
        type=int,
        metavar="N",
        help="0, or one per training process: trainer.devices x trainer.num_nodes (the default, but with "
        "trainer.accelerator cpu)",
    )
    slurm.add_argument("--max-running", type=int, metavar="N", help="points (of one job array) running at once")
    slurm.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="extra sbatch option, long form, repeatable: --sbatch=--account=NAME --sbatch=--qos=NAME",
    )
    slurm.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line each job runs first, repeatable: --setup 'module load cuda/12.4'",
    )
    slurm.add_argument(
        "--max-requeues", type=int, metavar="N", help="at most N requeues of a training (default: no limit)"
    )
    p.set_defaults(func=_ablate)


def _add_separate(sub) -> None:
    """`lightsaft separate`: its defaults are the params' (separate, runtime.separate, report), one set of
    defaults and checks for the stage and the command."""
    from .report.params import REPORT
    from .separation.params import FORMATS, OUTPUT, RUNTIME_SEPARATE, SEPARATE

    p = sub.add_parser("separate", help="separate songs into vocals, drums, bass and other")
    p.add_argument("songs", nargs="+", metavar="SONG", help="wav, flac, mp3, ... or MUSDB .stem.mp4 (its mixture)")
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="a DVC experiment's name (dvc exp show: its models/weights.pt), an MLflow run id or runs:/<run id> (its "
        "logged model), a logged model models:/<model id>, a registered model models:/<name>/<version> or "
        "models:/<name>@<alias>, our weights file (models/weights.pt), an official .ckpt or a published name "
        "such as lasaft_large_2021 (imported once into .lightsaft/pretrained/); a name that means two of "
        "these is refused, listing them",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<song>/<target>.<ext>")
    p.add_argument("--targets", help="comma-separated (default: all four: vocals,drums,bass,other)")
    p.add_argument(
        "--two-stems",
        metavar="TARGET",
        help="only TARGET through the model; writes TARGET and no_TARGET (the song minus TARGET), e.g. vocals "
        "and an instrumental",
    )
    sep, run, rep = SEPARATE.defaults(), RUNTIME_SEPARATE.defaults(), REPORT.defaults()
    p.add_argument("--device", default=run["device"], help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument(
        "--overlap",
        type=float,
        default=sep["overlap"],
        help=f"fraction shared by neighbouring windows (default {sep['overlap']})",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=run["batch_size"],
        help="(chunk, target) pairs per forward pass; auto (default): as many as a share of the free memory holds",
    )
    p.add_argument(
        "--protocol",
        default=sep["protocol"],
        help="crossfade: seamless, any overlap (default); official: the authors' separate_track, overlap 0 to 0.5, "
        "for comparing with published scores",
    )
    p.add_argument(
        "--min-trim",
        type=int,
        metavar="SAMPLES",
        help=f"samples dropped at each window edge, rounded up to whole hops (default: the official amount for the "
        f"model: {sep['min_trim']}, or what the MDX kit used for lightsaft_small_2020)",
    )
    p.add_argument(
        "--precision",
        default=sep["precision"],
        help="inference precision: float32 (default; true float32, no TF32 on any GPU) or bf16",
    )
    out = OUTPUT.defaults()
    p.add_argument(
        "--format",
        default=out["format"],
        help=f"of the files: {', '.join(FORMATS)} (default {out['format']}: 16-bit wav); integer formats and mp3 "
        "clip samples beyond [-1, 1] and say how many; float: 32-bit float wav",
    )
    p.add_argument(
        "--mp3-bitrate",
        type=int,
        default=out["mp3_bitrate"],
        metavar="KBPS",
        help=f"with --format mp3 (default {out['mp3_bitrate']})",
    )
    p.add_argument(
        "--page",
        action="store_true",
        help="also write an offline demo page: songs and page go to DIR/<model>-<sha8>/, <model> being the "
        "experiment or model name given (or the weights file's name); one folder and page per model, more songs "
        "with the same model add rows; open its index.html",
    )
    p.add_argument(
        "--excerpt-seconds",
        type=float,
        default=rep["excerpt_seconds"],
        help=f"length of the page's excerpts (default {rep['excerpt_seconds']:g})",
    )
    p.add_argument(
        "--excerpt-offset",
        type=float,
        default=rep["excerpt_offset"],
        help=f"where the excerpts start, seconds (default {rep['excerpt_offset']:g})",
    )
    p.add_argument(
        "--audio-format", default=rep["audio_format"], help="of the page's excerpts: mp3 (default), ogg or wav"
    )
    p.set_defaults(func=_separate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return reported(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
