"""params.yaml: the schema, its defaults and all validation, in one place.

Every stage gets a fully validated, default-filled dict. Errors name the dotted key, the
value and what would be valid, so a typo in ``dvc exp run -S model.dkk=32`` fails at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MUSDB_SAMPLE_URL = "https://github.com/sigsep/sigsep-mus-db/releases/download/v0.4.0/MUSDB18-7-STEMS.zip"


# ---------------------------------------------------------------------------------------
# Value checks: each returns None when the value is fine, else the reason it is not.
Check = Callable[[Any], str | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None, nullable: bool = False, why: str = "") -> Check:
    def check(v):
        if v is None and nullable:
            return None
        if not _is_int(v):
            return "expected an integer" + (" or null" if nullable else "")
        if lo is not None and v < lo:
            return f"must be >= {lo}{why}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, nullable: bool = False) -> Check:
    def check(v):
        if v is None and nullable:
            return None
        if isinstance(v, str):
            return f"expected a number, got the text {v!r}"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "expected a finite number" + (" or null" if nullable else "")
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return check


def boolean() -> Check:
    return lambda v: None if isinstance(v, bool) else "expected true or false"


def choice(*options: Any) -> Check:
    def check(v):
        return None if v in options else f"must be one of {', '.join(map(repr, options))}"

    return check


def text(nullable: bool = False, pattern: str | None = None, hint: str = "") -> Check:
    def check(v):
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v:
            return "expected a non-empty string" + (" or null" if nullable else "")
        if pattern and not re.fullmatch(pattern, v):
            return hint or f"must match {pattern}"
        return None

    return check


def list_of(item: Check, nullable: bool = True) -> Check:
    def check(v):
        if v is None and nullable:
            return None
        if not isinstance(v, list):
            return "expected a list" + (" or null" if nullable else "")
        for x in v:
            if (reason := item(x)) is not None:
                return f"item {x!r}: {reason}"
        return None

    return check


def one_of(*checks: Check, hint: str) -> Check:
    return lambda v: None if any(c(v) is None for c in checks) else hint


def choice_from(registry: Callable[[], Iterable[Any]]) -> Check:
    """A choice among the names of a registry, read when a value is checked: the registry that
    implements the options (losses, engines, ...) is the only list of them."""

    def check(v):
        options = list(registry())
        return None if v in options else f"must be one of {', '.join(map(repr, options))}"

    return check


def _activations():
    from .model.layers import ACTIVATIONS

    return ACTIVATIONS


def _losses():
    from .training.losses import LOSSES

    return LOSSES


def _optimizers():
    from .training.optimizers import OPTIMIZERS

    return OPTIMIZERS


def _engines():
    from .evaluation.engines import ENGINES

    return ENGINES


def _audio_formats():
    from .report.results import FORMATS

    return FORMATS


def _sources():
    from .data.sources import SOURCES

    return SOURCES


def _variants():
    from .model.layers import FREQUENCY_TRANSFORMS

    return FREQUENCY_TRANSFORMS


def _protocols():
    from .separation.plans import PROTOCOLS

    return PROTOCOLS


def _precisions():
    from .separation.track import PRECISIONS

    return PRECISIONS


def _devices() -> Check:
    return text(pattern=r"auto|cpu|cuda(:\d+)?|mps", hint="expected auto, cpu, cuda, cuda:N or mps")


# ---------------------------------------------------------------------------------------
# The schema: section -> key -> (default, check). Nested dicts are sub-sections.
#
# Two kinds of params. Every section but ``runtime`` changes results: the stages that read it
# depend on it in dvc.yaml (a change reruns them), it is part of a training's fingerprint and of
# its MLflow params. ``runtime`` only changes how a run executes (workers, devices, batch of an
# inference pass, resuming): DVC does not track it, so changing it never reruns anything.
RUNTIME = "runtime"

SCHEMA: dict[str, dict[str, Any]] = {
    "data": {
        "source": ("musdb18", choice_from(_sources)),
        "root": ("data/musdb18", text()),
        "archive": (None, text(nullable=True)),
        "sha256": (None, text(nullable=True, pattern=r"[0-9a-f]{64}", hint="must be 64 lowercase hex digits")),
        "sample_url": (MUSDB_SAMPLE_URL, text()),
        "allow_insecure_http": (False, boolean()),
        "valid_tracks": (None, list_of(text())),
        "synthetic": {
            "train_tracks": (6, integer(1)),
            "valid_tracks": (2, integer(1)),
            "test_tracks": (2, integer(1)),
            "seconds": (8.0, number(0.5)),
            "seed": (0, integer(0)),
        },
    },
    "prepare": {
        "dtype": ("float16", choice("float16", "float32")),
    },
    "model": {
        "variant": ("lightsaft", choice_from(_variants)),
        "n_fft": (4096, integer(16)),
        "hop_length": (1024, integer(1)),
        "num_frame": (128, integer(2)),
        "spec_type": ("complex", choice("complex")),
        "spec_est_mode": ("mapping", choice("mapping", "masking")),
        "n_blocks": (9, integer(3)),
        "input_channels": (4, choice(4)),
        "internal_channels": (24, integer(1)),
        "first_conv_activation": ("relu", choice_from(_activations)),
        "last_activation": ("identity", choice_from(_activations)),
        "t_down_layers": (None, list_of(integer(0))),
        "f_down_layers": (None, list_of(integer(0))),
        "n_internal_layers": (5, integer(1)),
        "kernel_size_t": (3, integer(1)),
        "kernel_size_f": (3, integer(1)),
        "tfc_tdf_activation": ("relu", choice_from(_activations)),
        "bn_factor": (16, integer(1)),
        "min_bn_units": (16, integer(1)),
        "tfc_tdf_bias": (True, boolean()),
        "num_tdfs": (16, integer(1)),
        "dk": (64, integer(1)),
        "control_vector_type": ("embedding", choice("embedding")),
        "control_input_dim": (4, choice(4)),
        "embedding_dim": (32, integer(1)),
        "control_n_layer": (4, integer(1)),
        "control_type": ("dense", choice("dense")),
        "condition_to": ("decoder", choice("decoder")),
        "pocm_type": ("matmul", choice("matmul")),
        "pocm_norm": ("batch_norm", choice("batch_norm", None)),
    },
    "train": {
        "seed": (2020, integer(0)),
        "init": ("official", choice("official", "pytorch")),
        "optimizer": ("adam", choice_from(_optimizers)),
        "lr": (0.001, number(0, lo_open=True)),
        "train_loss": ("spec_mse", choice_from(_losses)),
        "val_loss": ("raw_l1", choice_from(_losses)),
        "auto_lr_schedule": (True, boolean()),
        "lr_factor": (0.5, number(0, 1, lo_open=True)),
        "lr_patience": (50, integer(0)),
        "early_stop_patience": (300, integer(1, nullable=True)),  # null: no early stopping
        "early_stop_min_delta": (0.05, number(0)),
        "save_top_k": (5, integer(1)),
        "items_per_epoch": (None, integer(1, nullable=True)),
        "mix_across_tracks": (True, boolean()),
        "augment_gain": (False, boolean()),
        "augment_channel_swap": (False, boolean()),
        "valid_chunks_per_track": (None, integer(1, nullable=True)),
        "pretrained": (None, text(nullable=True)),
    },
    "trainer": {
        "accelerator": ("auto", choice("auto", "cpu", "gpu", "cuda", "mps")),
        "devices": (
            1,
            one_of(
                choice("auto"),
                integer(-1),
                list_of(integer(0), nullable=False),
                hint="expected 'auto', a device count or a list of device ids",
            ),
        ),
        "num_nodes": (1, integer(1)),
        "strategy": ("auto", choice("auto", "ddp", "ddp_find_unused_parameters_true")),
        "sync_batchnorm": (False, boolean()),
        "precision": ("auto", choice("auto", 32, "32", "32-true", "16-mixed", "bf16-mixed", "bf16-true")),
        "max_epochs": (1000, integer(-1)),
        "max_steps": (-1, integer(-1)),
        "limit_train_batches": (1.0, number(0, lo_open=True)),
        "limit_val_batches": (1.0, number(0, lo_open=True)),
        "batch_size": (8, integer(2, why=" (BatchNorm cannot train on batches of one item)")),
        "gradient_clip_val": (None, number(0, nullable=True)),
        "accumulate_grad_batches": (1, integer(1)),
        "deterministic": ("warn", choice(True, False, "warn")),
        "log_every_n_steps": (50, integer(1)),
        "check_val_every_n_epoch": (1, integer(1)),
    },
    "separate": {
        "protocol": ("crossfade", choice_from(_protocols)),
        "overlap": (0.5, number(0, 0.9)),
        "min_trim": (5000, integer(0)),
        "precision": ("float32", choice_from(_precisions)),
    },
    "evaluate": {
        "engine": ("fast", choice_from(_engines)),
    },
    "report": {
        "excerpt_seconds": (15.0, number(0, lo_open=True)),
        "excerpt_offset": (0.0, number(0)),
        "audio_format": ("mp3", choice_from(_audio_formats)),
    },
    "mlflow": {
        "experiment": ("lightsaft", text()),
    },
    RUNTIME: {
        "prepare": {
            "jobs": ("auto", one_of(choice("auto"), integer(1), hint="expected auto or a number of worker processes")),
        },
        "train": {
            "resume": (False, boolean()),
            "num_workers": (2, integer(0)),
            "ddp_timeout_s": (1800, integer(1)),
        },
        "separate": {
            "batch_size": ("auto", one_of(choice("auto"), integer(1), hint="expected auto or a number of pairs")),
            "device": ("auto", _devices()),
        },
        "evaluate": {
            "jobs": (2, integer(1)),
            "device": ("auto", _devices()),
        },
    },
}


def result_sections() -> tuple[str, ...]:
    """The sections whose values change results (all but ``runtime``)."""
    return tuple(s for s in SCHEMA if s != RUNTIME)


# ---------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: ``1e-4`` is a number (DVC's ``-S`` writes it that way), not text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, naming the file in any error."""
    path = Path(path)
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:  # on one line: where, what, and in which construct
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}{f' ({context})' if context else ''}"
        ) from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate a params file; returns every section with defaults filled in."""
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    return validate(raw, where=str(path))


def defaults() -> dict[str, Any]:
    return validate({})


def validate(params: Mapping[str, Any], where: str = "params") -> dict[str, Any]:
    """Validate a whole params mapping (all sections), filling defaults."""
    out = _validate_mapping(params, SCHEMA, prefix="", where=where)
    _check_model(out["model"], where, prefix="model.")
    _check_trainer(out["trainer"], where)
    return out


def validate_section(name: str, values: Mapping[str, Any], where: str = "params") -> dict[str, Any]:
    """Validate one section (e.g. the ``model`` dict of a weights file or golden config)."""
    if name not in SCHEMA:
        raise ConfigError(f"{where}: unknown section {name!r}")
    out = _validate_mapping(values, SCHEMA[name], prefix=f"{name}.", where=where)
    if name == "model":
        _check_model(out, where, prefix="model.")
    return out


def _validate_mapping(values: Any, schema: Mapping[str, Any], prefix: str, where: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping of keys, got {type(values).__name__}"
        )
    unknown = [k for k in values if k not in schema]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {prefix}{unknown[0]}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(schema)}"
        )
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out[key] = _validate_mapping(values.get(key, {}) or {}, spec, f"{prefix}{key}.", where)
            continue
        default, check = spec
        value = values.get(key, default)
        if (reason := check(value)) is not None:
            raise ConfigError(f"{where}: {prefix}{key} = {value!r}: {reason}")
        out[key] = value
    return out


def _check_model(m: dict[str, Any], where: str, prefix: str) -> None:
    """Constraints between model keys (shapes the U-Net must be able to build)."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{where}: {prefix}{key} = {m[key]!r}: {why}")

    if m["n_fft"] & (m["n_fft"] - 1):
        fail("n_fft", "must be a power of two (the U-Net halves n_fft//2 frequency bins per level)")
    if m["hop_length"] > m["n_fft"]:
        fail("hop_length", f"must not exceed n_fft ({m['n_fft']})")
    if m["n_blocks"] % 2 == 0:
        fail("n_blocks", "must be odd: n encoder blocks, one middle block, n decoder blocks")
    levels = m["n_blocks"] // 2
    for axis in ("t_down_layers", "f_down_layers"):
        layers = m[axis]
        if layers is not None and any(i >= levels for i in layers):
            fail(axis, f"level indices must be below n_blocks // 2 = {levels}")
    t_levels = levels if m["t_down_layers"] is None else len(set(m["t_down_layers"]))
    f_levels = levels if m["f_down_layers"] is None else len(set(m["f_down_layers"]))
    if m["num_frame"] % 2**t_levels:
        fail(
            "num_frame",
            f"must be divisible by 2**{t_levels} = {2**t_levels}, the U-Net's total "
            f"time downsampling with n_blocks = {m['n_blocks']}",
        )
    if (m["n_fft"] // 2) % 2**f_levels or m["n_fft"] // 2 < 2**f_levels:
        fail(
            "n_fft",
            f"n_fft // 2 must be divisible by 2**{f_levels}, the U-Net's total frequency "
            f"downsampling with n_blocks = {m['n_blocks']}",
        )
    for key in ("kernel_size_t", "kernel_size_f"):
        if m[key] % 2 == 0:
            fail(key, "must be odd so that the convolution keeps the tensor size")


def _check_trainer(tr: dict[str, Any], where: str) -> None:
    """Settings no machine can run (the GPU a setting needs is checked when training starts)."""
    if tr["sync_batchnorm"] and tr["accelerator"] in ("cpu", "mps"):
        raise ConfigError(
            f"{where}: trainer.sync_batchnorm = true with trainer.accelerator = {tr['accelerator']!r}: PyTorch's "
            f"SyncBatchNorm runs on CUDA GPUs only; set trainer.sync_batchnorm: false to train on this device"
        )


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"dk": 64}}`` -> ``{"model.dk": 64}`` (MLflow params, tables)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
