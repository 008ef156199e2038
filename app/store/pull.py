"""`pull`: fill the store with a model from the first of its sources that delivers."""

from __future__ import annotations

from pathlib import Path

from app import config
from app.errors import BadModelFile, DigestMismatch, LoamError, SourceUnavailable
from app.store.catalog import Catalog, CatalogEntry
from app.store.gguf_info import GGUFInfo, inspect
from app.store.names import ModelName
from app.store.progress import ProgressEvent, ProgressFn, ignore_progress
from app.store.sources import RegistrySource, Source, parse_source
from app.store.store import Store, check_model_file

#: Failures after which the next source is worth trying.
_SOURCE_FAILURES = (SourceUnavailable, DigestMismatch, BadModelFile)


def pull(
    store: Store,
    catalog: Catalog,
    text: str,
    progress: ProgressFn = ignore_progress,
    *,
    insecure: bool = False,
    source: str | None = None,
) -> ModelName:
    """Pull `text` (a model name) and return its full name once its manifest is written.

    Sources: `source` when given, else the catalog entry's, else the registry the
    name points at. Each failing source is noted and the next one tried.
    """
    name = ModelName.parse(text)
    entry = catalog.get(name)
    if source is not None:
        sources: list[Source] = [parse_source(source, Path.cwd())]
    elif entry is not None:
        sources = list(entry.sources)
    else:
        sources = [RegistrySource(name, insecure=insecure)]
    store.blobs.prune_partials(config.PARTIAL_GRACE_SECONDS)
    failures: list[LoamError] = []
    for i, src in enumerate(sources):
        try:
            _pull_from(store, name, entry if source is None else None, src, progress)
            progress(ProgressEvent("success"))
            return name
        except _SOURCE_FAILURES as e:
            failures.append(e)
            if i + 1 < len(sources):
                progress(ProgressEvent(f"{e}; trying the next source"))
    raise _final_error(name, entry, source, failures, catalog, store)


def _pull_from(store: Store, name: ModelName, entry: CatalogEntry | None, src: Source, progress: ProgressFn) -> None:
    if isinstance(src, RegistrySource):
        pulled = src.pull(store.blobs, progress, check_model_file)
        progress(ProgressEvent("writing manifest"))
        store.manifests.write(name, pulled.raw)
        return
    checked: list[GGUFInfo] = []
    ref = src.fetch_model(
        store.blobs,
        entry.digest if entry else None,
        entry.size if entry else None,
        progress,
        lambda path: checked.append(inspect(path)),
    )
    progress(ProgressEvent("verifying sha256 digest"))
    info = checked[0] if checked else inspect(store.blobs.path(ref.digest))
    progress(ProgressEvent("writing manifest"))
    store.write_model(
        name,
        ref,
        info,
        template=entry.template if entry else None,
        system=entry.system if entry else None,
        parameters=entry.parameters if entry else None,
        license=entry.license if entry else None,
    )


def _final_error(
    name: ModelName,
    entry: CatalogEntry | None,
    source: str | None,
    failures: list[LoamError],
    catalog: Catalog,
    store: Store,
) -> LoamError:
    last = failures[-1]
    if entry is None and source is None:
        hints = catalog.suggest(name.display, (m.name.display for m in store.list()))
        hint = f"; did you mean {', '.join(hints)}?" if hints else "; `loam list` shows the models you have"
        return type(last)(
            f"model {name.display!r} is not in the catalog and {name.host} could not deliver it ({last}){hint}"
        )
    if len(failures) == 1:
        return last
    return type(last)(f"could not pull {name.display}: all {len(failures)} sources failed; last: {last}")
