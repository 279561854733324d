"""The Python API: a real package with a version, type information and a small public surface that resolves
lazily (``import flywheel`` loads no torch, transformers or MLflow)."""

import importlib
import subprocess
import sys
import tomllib

from tests.conftest import ROOT


def test_version_is_the_projects_and_the_images_tag():
    import flywheel
    from flywheel.kubeflow.components import GPU_IMAGE, IMAGE

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert flywheel.__version__ == project
    assert IMAGE.endswith(f":{project}") and GPU_IMAGE.endswith(f":{project}")


def test_every_public_name_resolves_to_its_definition():
    import flywheel

    for name in flywheel.__all__:
        value = getattr(flywheel, name)
        if name != "__version__":
            assert value is getattr(importlib.import_module(flywheel._EXPORTS[name]), name), name
    assert set(dir(flywheel)) == set(flywheel.__all__)
    try:
        flywheel.no_such_name  # noqa: B018 (the attribute access is the test)
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name resolved")


def test_importing_the_package_stays_cheap():
    code = ("import sys, flywheel; "
            "print(sorted(m for m in ('torch', 'transformers', 'mlflow', 'trl') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_the_package_ships_its_type_information():
    assert (ROOT / "src" / "flywheel" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["flywheel"]


def test_the_design_page_names_only_what_exists_and_the_code_points_at_no_outside_file():
    import re

    text = (ROOT / "docs" / "design.md").read_text()
    shape = text.split("```")[1]
    package = ROOT / "src" / "flywheel"
    for line in shape.splitlines():
        if "(planned)" in line or not line.startswith("  "):
            continue
        for name in re.findall(r"[\w.]+\.py|[\w]+/", line.split("  ")[1] if "  " in line.strip() else line):
            assert (package / name).exists(), f"docs/design.md names src/flywheel/{name}, which does not exist"
    for path in (ROOT / "src").rglob("*.py"):
        assert "DESIGN.md" not in path.read_text(), f"{path} points at a design file outside the repository"
