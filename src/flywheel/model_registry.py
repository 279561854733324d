"""The registered model: the seed and every candidate as versions, and the ``champion`` alias.

The alias moves only when a gate promotes, and then by compare-and-swap (``ModelRegistry.promote``): only
if it still names the version the round started from. A round whose gate promoted but whose alias had
moved meanwhile (another run, an overlapping schedule) ends ``stale``, with nothing moved. The runs a
version belongs to are ``flywheel.tracking``'s.
"""

from __future__ import annotations

from pathlib import Path

from flywheel.config import TrackingConfig
from flywheel.tracking_store import store_call

CHAMPION_ALIAS = "champion"
# Model version tag: the URI of the model directory inside the version's pyfunc (what a round continues from).
FILES_TAG = "flywheel.files"
# The outcome of a round for the registry: the gate declined, promoted (alias moved), or promoted a candidate
# of a champion that is no longer the alias holder (stale: nothing moved).
PROMOTED, DECLINED, STALE = "promoted", "declined", "stale"


def promotion_record(model: str, started_from: str) -> str:
    """The name of the record that lets one promotion leave ``model``'s version ``started_from`` (``promote``)."""
    return f".flywheel-promotion:{model}:from-v{started_from}"


class ModelRegistry:
    """``config.registered_model`` in the store of ``client`` (the tracker's); its versions' pyfuncs are logged to
    ``experiment_id``'s runs."""

    def __init__(self, client, config: TrackingConfig, experiment_id: str):
        self.client, self.config, self.experiment_id = client, config, experiment_id
        self.name = config.registered_model
        # How a registered model answers prompts (flywheel.mlflow_model): the tracker sets it from the loop's config.
        self.serving = {"task": "addition", "max_new_tokens": 32}

    def ensure(self) -> None:
        """Create the registered model if the store has none of that name."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name, description=(
                "Candidates of the flywheel; alias 'champion' = current best."))

    @store_call
    def register_seed(self, parent_run_id: str, seed_dir: Path) -> str:
        """Register the seed as a version; it becomes the champion only if there is none yet."""
        self.ensure()
        for version in self.client.search_model_versions(f"run_id = '{parent_run_id}'"):
            if version.tags.get("role") == "seed":  # registered before this run was interrupted and resumed
                return version.version
        version = self._create_version(parent_run_id, Path(seed_dir), "seed", tags={"role": "seed"})
        if self.champion_version() is None:
            self.client.set_registered_model_alias(self.name, CHAMPION_ALIAS, version.version)
        return version.version

    def register_candidate(self, run_id: str, candidate_dir: Path, decision: dict, tags: dict) -> str:
        """Register a round's candidate under its round run ``run_id``, with ``tags`` and the gate's
        ``decision`` (its reason is the version's description, ``promoted`` a tag). Moves no alias."""
        self.ensure()
        version = self._create_version(run_id, candidate_dir, "candidate", description=decision["reason"],
                                       tags={**tags, "promoted": str(decision["promote"]).lower()})
        return version.version

    def settle(self, version: str, *, promote: bool, started_from: str | None, claim: str) -> tuple[str, str | None]:
        """A registered candidate's outcome, also tagged on it as ``promotion``: DECLINED where its gate did not
        ``promote``, else ``promote``'s. Returns (outcome, the alias holder after)."""
        outcome, holder = DECLINED, self.champion_version()
        if promote:
            outcome, holder = self.promote(version, started_from=started_from, claim=claim)
        self.client.set_model_version_tag(self.name, version, "promotion", outcome)
        return outcome, holder

    def _create_version(self, run_id: str, model_dir: Path, name: str, *, tags: dict, description: str | None = None):
        from flywheel.mlflow_model import log_pyfunc  # MLflow's pyfunc: only where a run is tracked

        model_id, source, files = log_pyfunc(self.client, run_id, self.experiment_id, model_dir, name, **self.serving)
        return self.client.create_model_version(self.name, source, run_id, tags={**tags, FILES_TAG: files},
                                                description=description, model_id=model_id)

    def champion_version(self) -> str | None:
        """The version the ``champion`` alias names now (None: no alias yet)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.name, CHAMPION_ALIAS).version
        except MlflowException:
            return None

    def promote(self, version: str, *, started_from: str | None, claim: str) -> tuple[str, str | None]:
        """Move the ``champion`` alias to ``version`` only if it still names ``started_from``.

        MLflow has no conditional alias update, so the swap is guarded by a record only one writer can
        create: an MLflow experiment named ``.flywheel-promotion:<model>:from-v<started_from>`` (experiment
        names are unique in every MLflow store, deleted ones included; a second create fails with
        RESOURCE_ALREADY_EXISTS). The record is deleted as soon as it is made, so it never shows in the
        user's experiments or models, while its name stays taken and its tags readable. The alias only
        ever moves to a new version, so each version is left at most once and two rounds that started
        from the same champion cannot both move it. ``claim`` names the round (loop run and round); a re-run
        of the same round after a kill finishes its own claim. Returns (PROMOTED or STALE, the alias holder
        after).
        """
        from mlflow.exceptions import MlflowException

        current = self.champion_version()
        if started_from is None:  # a lineage with no registered champion (no seed version): never move
            return STALE, current
        record = promotion_record(self.name, started_from)
        if current != started_from and self._record(record).get("flywheel.claim") != claim:
            return STALE, current
        try:
            record_id = self.client.create_experiment(
                record, tags={"flywheel.claim": claim, "from_version": str(started_from), "to_version": str(version),
                              "mlflow.note.content": f"Promotion record: the '{CHAMPION_ALIAS}' alias of {self.name} "
                                                     f"left v{started_from} for v{version}. Guards the "
                                                     "compare-and-swap; do not delete permanently."})
            self.client.delete_experiment(record_id)  # out of sight; the name stays taken
        except MlflowException as error:
            existing = self._record(record)
            if error.error_code != "RESOURCE_ALREADY_EXISTS" or existing.get("flywheel.claim") != claim:
                # Lost the race: the winner's version is (or is about to be) the alias holder.
                return STALE, existing.get("to_version") or self.champion_version()
            self._retarget(record, version)  # our own claim, interrupted before the alias moved
        self.client.set_registered_model_alias(self.name, CHAMPION_ALIAS, version)
        return PROMOTED, version

    def _record(self, name: str) -> dict:
        """The tags of promotion record ``name`` ({} if there is none)."""
        experiment = self.client.get_experiment_by_name(name)
        return dict(experiment.tags) if experiment is not None else {}

    def _retarget(self, name: str, version: str) -> None:
        """Point our own promotion record at ``version`` (a deleted experiment takes tags only while restored)."""
        record_id = self.client.get_experiment_by_name(name).experiment_id
        self.client.restore_experiment(record_id)
        try:
            self.client.set_experiment_tag(record_id, "to_version", str(version))
        finally:
            self.client.delete_experiment(record_id)
