"""dvc.yaml, layout.py, the params schema and the code agree: what each stage reads and writes.

These are the facts DVC relies on to rerun exactly what changed. A param missing from a stage's
``params:`` would let DVC reuse a stale result without a word; a module missing from its
``deps:`` likewise; an execution-only setting listed there would rerun work for nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from lightsaft import layout
from lightsaft.config import RUNTIME, SCHEMA, defaults, flatten, result_sections, validate
from lightsaft.stage import stage_params

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
SRC = REPO / "src"
# Plumbing: parse params, report errors, name paths, check the interpreter. It shapes no output, so code
# deps leave it out.
PLUMBING = {"lightsaft.config", "lightsaft.stage", "lightsaft.errors", "lightsaft.layout", "lightsaft.environment"}


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
    read = flatten({k: v for k, v in view.items() if k != RUNTIME})
    assert set(read) == leaf_keys(DVC[name]["params"])
    assert set(flatten(view.get(RUNTIME, {}))) <= set(flatten({name: defaults()[RUNTIME].get(name, {})}))


def test_every_param_is_either_read_by_a_stage_or_runtime():
    """The two kinds of params: result-changing keys (each a DVC param of some stage) and runtime
    keys (in no stage's params, so they never rerun anything)."""
    flat = set(flatten(defaults()))
    runtime = {k for k in flat if k.startswith(RUNTIME + ".")}
    declared = leaf_keys(p for stage in DVC.values() for p in stage["params"])
    assert declared | runtime == flat
    assert not declared & runtime
    assert RUNTIME not in result_sections() and set(result_sections()) | {RUNTIME} == set(SCHEMA)


def test_runtime_settings_are_execution_only():
    """The execution-only settings named in the issue live in runtime (not in any DVC params)."""
    runtime = set(flatten(defaults()[RUNTIME]))
    assert {"train.resume", "train.num_workers", "evaluate.jobs", "evaluate.device", "separate.batch_size"} <= runtime


def test_changing_runtime_never_changes_a_training_fingerprint(synthetic_cache):
    from lightsaft.data.cache import Cache
    from lightsaft.train import fingerprint

    cache = Cache(synthetic_cache)
    base = defaults()
    changed = defaults()
    changed[RUNTIME]["train"].update(resume=True, num_workers=7)
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
        if module in seen or module in PLUMBING or module_file(module) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}  # parent packages run too
        path = module_file(module)
        todo |= imported(path, module if path.name == "__init__.py" else module.rsplit(".", 1)[0])
    return {str(module_file(m).relative_to(REPO)) for m in seen if has_code(module_file(m))}


@pytest.mark.parametrize("name", list(layout.STAGES))
def test_code_deps_are_the_modules_the_stage_imports(name):
    script = f"pipeline/{name}.py"
    code = {d for d in DVC[name]["deps"] if d.startswith(("src/", "pipeline/"))}
    assert code == {script} | code_closure(REPO / script)
