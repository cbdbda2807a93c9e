"""Which model a collection's vectors come from, and whether they are still right: the manifest's model (a moved
checkpoint file found by its content, a different model refused), what the first stored vectors are stamped with,
and vectors an earlier imgsearch or another recipe made (``stale.py``), found and marked for re-embedding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import checkpoints, stale
from .config import ModelConfig
from .errors import ModelLoadError, ModelMismatchError
from .storage.store import DB_NAME, Store


class ModelRecord:
    """One collection's model. ``requested``: the model asked for (None: the collection's own); ``device`` and
    ``backend``: where and how it runs this time; ``embedder`` loads torch's model, ``loaded`` gives it only when
    already loaded."""

    def __init__(
        self,
        folder: Path,
        store: Callable[[], Store],
        requested: ModelConfig | None,
        device: str | None,
        backend: str | None,
        embedder: Callable,
        loaded: Callable,
    ):
        self.folder, self._store, self._requested = folder, store, requested
        self._device, self._backend, self._embedder, self._loaded = device, backend, embedder, loaded

    @property
    def model(self) -> ModelConfig:
        """The collection's model (on the requested device)."""
        chosen = self._chosen()
        chosen = replace(chosen, device=self._device) if self._device else chosen
        return replace(chosen, backend=self._backend) if self._backend else chosen

    def stored(self) -> dict | None:
        """The manifest's model, once the collection holds vectors made by it."""
        if not (self.folder / DB_NAME).exists():
            return None
        store = self._store()
        stored = store.get("model")
        return stored if stored and (store.has_rows("images") or store.has_rows("texts")) else None

    def _chosen(self) -> ModelConfig:
        """The stored model; a different one asked for explicitly is refused."""
        stored, asked = self.stored(), self._requested
        if asked is not None and not asked.name:
            asked = replace(asked, name=stored["name"] if stored else ModelConfig.name)
        if stored is None:
            return asked or ModelConfig()
        built = ModelConfig.from_dict(stored)
        if stored.get("checkpoint"):
            built = self._find_checkpoint(built, stored["checkpoint"], asked)
        if asked is not None and asked.pretrained_as is None:
            asked = replace(asked, pretrained_as=built.pretrained_as)  # not asked for: the collection's own
        elif asked is not None and built.pretrained_as is None and checkpoints.is_path(built.pretrained):
            built = replace(built, pretrained_as=asked.pretrained_as)  # a checkpoint tied to its tag the first time
        if asked is not None and not asked.same_model(built):
            raise ModelMismatchError(
                f"{self.folder} was built with {built.label}, not {asked.label} (vectors of two models "
                "cannot be compared)",
                cli_hint=f"leave --model/--pretrained out to use {built.name}, or pass --collection NEW_PATH to start a "
                "separate collection for the other model",
                api_hint="open it with model=None to use its own model, or open another folder for the other model",
            )
        return (
            built
            if asked is None
            else replace(built, device=asked.device, precision=asked.precision, backend=asked.backend)
        )

    def _find_checkpoint(self, built: ModelConfig, fingerprint: dict, asked: ModelConfig | None) -> ModelConfig:
        """A checkpoint file is known by its content: a moved file is accepted at its new path."""
        offered = asked.pretrained if asked is not None and checkpoints.is_path(asked.pretrained) else None
        for path in filter(None, (offered, built.pretrained)):
            if checkpoints.matches(path, fingerprint):
                return replace(built, pretrained=path)
        if offered:
            raise ModelMismatchError(
                f"{offered} is not the checkpoint {self.folder} was built with ({built.pretrained}): "
                "their contents differ, and vectors of two models cannot be compared",
                cli_hint="pass the same checkpoint file (it may have moved), or --collection NEW_PATH for another model",
                api_hint="open it with the same checkpoint file (it may have moved), or open another folder",
            )
        raise ModelLoadError(
            f"{self.folder} was built with the checkpoint file {built.pretrained}, which is no longer there",
            cli_hint="pass its new location with --pretrained PATH",
            api_hint="pass model=ModelConfig(name, pretrained=NEW_PATH) to imgsearch.open",
        )

    def manifest(self, dim: int, recipe: dict) -> dict:
        """What the first stored vectors are written with: the model, their size, how they are made."""
        return {"model": self._entry(), "dim": dim, stale.EMBEDDING_KEY: stale.entry(recipe)}

    def _entry(self) -> dict:
        model = self.model
        entry: dict[str, object] = {
            "name": model.name,
            "pretrained": model.pretrained,
            "pretrained_as": model.pretrained_as,
        }
        if model.pretrained is not None and checkpoints.is_path(model.pretrained):
            entry["checkpoint"] = checkpoints.fingerprint(model.pretrained)
        return entry

    def changed(self) -> bool:
        """A checkpoint found at a new path, or tied to its tag for the first time: worth writing down."""
        stored = self.stored()
        if not stored:
            return False
        model = self.model
        return bool(
            stored.get("checkpoint")
            and model.pretrained != stored["pretrained"]
            or model.pretrained_as != stored.get("pretrained_as")
        )

    def note_changes(self, store: Store) -> None:
        """Under the writer lock: remember what ``changed`` found."""
        if self.changed():
            store.put("model", self._entry())

    def stale_before(self, store: Store) -> float | None:
        """Under the writer lock: find stored vectors that an earlier imgsearch, or another recipe, made (see
        ``stale.py``), mark them, and return the time before which rows are re-embedded (None: all are current)."""
        if self.stored() is None:
            return None
        recorded, current = store.get(stale.EMBEDDING_KEY), self.current_recipe()
        if recorded is None or not stale.runs_like(recorded["recipe"], current):
            if recorded is None:
                from .clip.models import legacy_recipe, training_sensitive

                made_with, sensitive = legacy_recipe(self.model).to_dict(), training_sensitive(self._embedder().model)
            else:
                made_with, sensitive = recorded["recipe"], []
            why = stale.reasons(self.model.label, recorded, made_with, current, sensitive)
            if why:
                earlier = store.get(stale.STALE_KEY) or {}
                store.put(stale.STALE_KEY, stale.mark(earlier.get("why", []) + why))
            store.put(stale.EMBEDDING_KEY, stale.entry(current))
        marker = store.get(stale.STALE_KEY)
        return marker["before"] if marker else None

    def current_recipe(self) -> dict:
        """How this model's vectors are made today: from its export when cached (no torch), else decided by
        open_clip's tables (``clip.models.recipe_for``; a checkpoint that cannot be tied to a tag is refused)."""
        from .inference import backends

        export = backends.runnable_export(self.model)
        if export is not None and "recipe" in export.meta:
            return export.meta["recipe"]
        if self._loaded() is not None:
            return self._loaded().recipe_record
        from .clip.models import recipe_for

        return recipe_for(self.model).to_dict()

    def clear_stale(self, store: Store) -> None:
        """Drop the stale marker once no row written before it remains."""
        marker = store.get(stale.STALE_KEY)
        if marker and not any(store.count_written_before(t, marker["before"]) for t in ("images", "texts")):
            store.delete(stale.STALE_KEY)

    def stale_warnings(self) -> list[str]:
        """Vectors made wrongly by an earlier imgsearch (``stale.py``), until an index run re-embeds them."""
        if self.stored() is None:
            return []
        store = self._store()
        marker = store.get(stale.STALE_KEY)
        if marker:
            counts = [store.count_written_before(t, marker["before"]) for t in ("images", "texts")]
            found = [stale.warning(marker, *counts)] if any(counts) else []
        else:
            found = [stale.LEGACY_WARNING] if store.get(stale.EMBEDDING_KEY) is None else []
        return found
