"""dvc.yaml, layout.py, the params sections and the code agree: what each stage reads and writes.

These are the facts DVC relies on to rerun exactly what changed. A param missing from a stage's
``params:`` would let DVC reuse a stale result without a word; a module missing from its
``deps:`` likewise; an execution-only or recording setting (or module) listed there would rerun
work for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from lightsaft import layout
from lightsaft.config import SECTIONS, defaults, sections, validate
from lightsaft.schema import RECORDING, RESULT, RUNTIME, flatten, read_yaml
from lightsaft.stage import stage_params

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
SRC = REPO / "src"


def leaf_keys(entries) -> set[str]:
    """Dotted leaf keys of params entries (``model`` -> every ``model.*`` key)."""
    flat = flatten(defaults())
    return {k for entry in entries for k in flat if k == entry or k.startswith(entry + ".")}


def outputs(stage: dict) -> set[Path]:
    names = []
    for kind in ("outs", "metrics", "plots"):
        names += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])]
    return {Path(n) for n in names}


def test_every_stage_of_dvc_yaml_is_in_layout():
    assert list(DVC) == list(layout.STAGES)


@pytest.mark.parametrize("name", list(layout.STAGES))
def test_outputs_and_data_inputs_match_dvc_yaml(name):
    spec, stage = layout.STAGES[name], DVC[name]
    assert outputs(stage) == set(spec.outputs)
    data_deps = {Path(d) for d in stage["deps"] if not d.startswith(("src/", "pipeline/"))}
    assert data_deps == set(spec.inputs)
    assert stage["cmd"] == f"PYTHONPATH=src python pipeline/{name}.py"


@pytest.mark.parametrize("name", list(layout.STAGES))
def test_params_of_dvc_yaml_are_what_the_stage_reads(name):
    """dvc.yaml lists exactly the declared params; the stage sees only those (and its runtime)."""
    assert DVC[name]["params"] == list(layout.STAGES[name].params)
    view = stage_params(name, defaults())
    records = set(layout.STAGES[name].records)
    read = flatten({k: v for k, v in view.items() if k != "runtime" and k not in records})
    assert set(read) == leaf_keys(DVC[name]["params"])
    assert set(flatten(view.get("runtime", {}))) <= set(flatten({name: defaults()["runtime"].get(name, {})}))


def test_every_param_is_of_one_kind_and_result_params_are_read_by_a_stage():
    """Three kinds of params: result keys (each a DVC param of some stage), runtime keys and
    recording keys (in no stage's DVC params, so they never rerun anything)."""
    flat = set(flatten(defaults()))
    of_kind = {kind: leaf_keys(s.name for s in sections(kind)) for kind in (RESULT, RUNTIME, RECORDING)}
    assert of_kind[RESULT] | of_kind[RUNTIME] | of_kind[RECORDING] == flat
    assert sum(map(len, of_kind.values())) == len(flat)
    declared = leaf_keys(p for stage in DVC.values() for p in stage["params"])
    assert declared == of_kind[RESULT]
    assert all(s.name.startswith("runtime.") for s in sections(RUNTIME))
    assert {"mlflow.experiment"} <= of_kind[RECORDING]


def test_recording_sections_are_handed_only_to_the_stages_that_declare_them():
    assert stage_params("train", defaults())["mlflow"] == defaults()["mlflow"]
    assert "mlflow" not in stage_params("evaluate", defaults())
    assert all(r in {s.name for s in sections(RECORDING)} for spec in layout.STAGES.values() for r in spec.records)


def test_params_yaml_spells_every_key_with_its_default():
    """params.yaml is the documentation of every key: each one there, with the value a missing key
    would get (a default that differed from the file would be a change DVC cannot see)."""
    assert flatten(read_yaml(REPO / "params.yaml")) == flatten(defaults())
    order = [s.name.split(".")[0] for s in SECTIONS]
    assert list(read_yaml(REPO / "params.yaml")) == list(dict.fromkeys(order))


def test_runtime_settings_are_execution_only():
    """The execution-only settings named in the issue live in runtime (not in any DVC params)."""
    runtime = set(flatten(defaults()["runtime"]))
    assert {"train.resume", "train.num_workers", "evaluate.jobs", "evaluate.device", "separate.batch_size"} <= runtime


def test_changing_runtime_never_changes_a_training_fingerprint(synthetic_cache):
    from lightsaft.data.cache import Cache
    from lightsaft.train import fingerprint

    cache = Cache(synthetic_cache)
    base = defaults()
    changed = defaults()
    changed["runtime"]["train"].update(resume=True, num_workers=7)
    changed["mlflow"]["experiment"] = "renamed"  # recording: where the run goes, not what it trains
    assert fingerprint(validate(changed), cache) == fingerprint(base, cache)
    changed["train"]["lr"] = 0.01
    assert fingerprint(validate(changed), cache) != fingerprint(base, cache)


# ---------------------------------------------------------------------------------------
# Code deps: the modules each stage's entry point imports, directly or not.
def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported(path: Path, package: str) -> set[str]:
    """Every ``lightsaft`` module ``path`` imports anywhere (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lightsaft"}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            if module.split(".")[0] == "lightsaft":
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names if module_file(f"{module}.{a.name}")}
    return found


def has_code(path: Path) -> bool:
    """False for a package __init__ that holds a docstring at most."""
    body = ast.parse(path.read_text()).body
    return not all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def code_closure(script: Path) -> set[str]:
    seen, todo = set(), imported(script, "")
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}  # parent packages run too
        path = module_file(module)
        todo |= imported(path, module if path.name == "__init__.py" else module.rsplit(".", 1)[0])
    shaping = [m for m in seen if layout.code_class(m) == "result" and has_code(module_file(m))]
    return {str(module_file(m).relative_to(REPO)) for m in shaping}


@pytest.mark.parametrize("name", list(layout.STAGES))
def test_code_deps_are_the_modules_the_stage_imports(name):
    script = f"pipeline/{name}.py"
    code = {d for d in DVC[name]["deps"] if d.startswith(("src/", "pipeline/"))}
    assert code == {script} | code_closure(REPO / script)


def test_every_module_is_in_one_code_class():
    """A new module must be classified (layout.CODE_CLASSES) before dvc.yaml can say who depends on it."""
    modules = [
        "lightsaft." + ".".join(p.relative_to(SRC / "lightsaft").with_suffix("").parts)
        for p in (SRC / "lightsaft").rglob("*.py")
        if p.name != "__init__.py"
    ]
    unclassified = [m for m in modules if layout.code_class(m) is None]
    assert not unclassified, f"add these to layout.CODE_CLASSES: {unclassified}"
    assert layout.code_class("lightsaft.tracking.store") == "recording"
    assert layout.code_class("lightsaft.separation.params") == "plumbing"
    assert layout.code_class("lightsaft.model.unet") == "result"


def test_no_stage_depends_on_recording_or_plumbing_code():
    code = {d for stage in DVC.values() for d in stage["deps"] if d.startswith("src/")}
    for dep in code:
        module = ".".join(Path(dep).with_suffix("").parts[1:])
        assert layout.code_class(module) == "result", dep
