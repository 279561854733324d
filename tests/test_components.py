"""components/: every step's reusable KFP component spec, compiled from the package, loadable by another team's
pipeline; pipelines/one_round_from_components.py builds a round from them alone."""

import importlib.util
from pathlib import Path

import yaml
from kfp import compiler
from kfp.components import load_component_from_file

from flywheel.kubeflow import components as package_components
from flywheel.kubeflow.pipelines import COMPONENT_NAMES, compile_components

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"


def test_every_component_spec_is_committed_and_recompiles_byte_for_byte(tmp_path):
    written = compile_components(tmp_path)
    assert sorted(p.name for p in COMPONENTS.glob("*.yaml")) == sorted(p.name for p in written)
    for path in written:
        assert path.read_bytes() == (COMPONENTS / path.name).read_bytes(), (
            f"components/{path.name} is stale: run `flywheel pipeline compile`")


def test_every_spec_loads_with_the_inputs_and_outputs_of_its_function():
    for name in COMPONENT_NAMES:
        loaded = load_component_from_file(str(COMPONENTS / f"{name}.yaml"))
        own = getattr(package_components, name)
        assert loaded.name == own.name
        assert set(loaded.component_spec.inputs or {}) == set(own.component_spec.inputs or {})
        assert set(loaded.component_spec.outputs or {}) == set(own.component_spec.outputs or {})
        executor = next(iter(loaded.pipeline_spec.deployment_spec["executors"].values()))
        assert f"def {name}(" in " ".join(executor["container"]["command"])  # the package's own function body


def test_a_round_built_only_from_the_specs_compiles(tmp_path):
    spec = importlib.util.spec_from_file_location("one_round", ROOT / "pipelines" / "one_round_from_components.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "one_round.yaml"
    compiler.Compiler().compile(module.one_round, str(out))
    tasks = yaml.safe_load(out.read_text())["root"]["dag"]["tasks"]
    assert {"preflight", "prepare", "make-prompts", "merge-samples", "vote", "curate", "train", "evaluate",
            "gate"} <= set(tasks)
