"""The environment is the locked one: every package in constraints.txt is installed at exactly its version.

`make setup` installs with `-c constraints.txt`; a fresh clone next month must get what the README's
figures were measured with, not the newest releases inside pyproject.toml's ranges.
"""

import re
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "constraints.txt"


def locked() -> dict[str, str]:
    pins = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier  # exactly one ==version per line
        assert spec.operator == "==", f"constraints.txt:{number}: {line}: not an exact pin"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_lock_pins_names_and_versions_only():
    text = LOCK.read_text()
    assert not re.search(r"--hash|--index-url|--extra-index-url|file://|https?://|@ ", text)
    pins = locked()
    for name in ("torch", "transformers", "trl", "datasets", "mlflow", "dvc", "kfp", "accelerate", "pip"):
        assert name in pins, f"{name} is not locked"
    assert pins["torch"] == "2.13.0" and pins["kfp"] == "2.17.0" and pins["mlflow"] == "3.17.2"
    assert "flywheel" not in pins


def test_installed_versions_match_the_lock():
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    mismatched = []
    for name, version in locked().items():
        have = installed.get(name)
        # torch's wheel here is 2.13.0+cpu: the lock drops local labels, as pip's == matching does.
        if have is None or Version(have).public != Version(version).public:
            mismatched.append(f"{name}: locked {version}, installed {have}")
    assert not mismatched, "re-run `make setup` (or scripts/lock.sh to move the lock):\n" + "\n".join(mismatched)


def test_every_dependency_of_the_package_is_locked():
    """A new dependency in pyproject.toml must be added to the lock (scripts/lock.sh), not resolved freshly."""
    pins = locked()
    requires = metadata.requires("flywheel") or []
    missing = []
    for line in requires:
        requirement = Requirement(line)
        extra = requirement.marker is not None and "extra" in str(requirement.marker)
        if extra and not any(f'"{e}"' in str(requirement.marker) for e in ("test", "cluster")):
            continue  # the gpu extra (vLLM) is never in the CPU environment
        name = canonicalize_name(requirement.name)
        if name != "flywheel" and name not in pins:
            missing.append(name)
    assert not missing, f"not in constraints.txt: {missing}"
