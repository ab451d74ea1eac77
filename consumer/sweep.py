"""Deleting what no committed manifest and no live run can use: decided from keys and S3.

Every data object's key names the claim (generation) and job that wrote it
(:meth:`common.layout.Layout.parse_data_key`). Once a manifest of generation ``g`` is
committed, a run of generation ``g`` or lower can never commit (a commit needs a higher
generation than the manifest it replaces), so everything such runs wrote that the
manifest does not name may go, whether they still run or not. Runs of a later generation
are never touched by that rule: they belong to a newer claim.

The final sweep (``python -m consumer sweep``) also removes the leftovers of jobs that
can never commit, by the date's state (:meth:`common.lifecycle.Lifecycle.may_commit`):
neither the date's live claim nor its lease holder. The claim's job and the lease's keep
everything (they may resume), whatever their age: no clock ever decides what is deleted.

Multipart uploads follow the same rules as objects. Partial-sum sidecars (``partials/``)
were written by earlier versions only and are read by nothing now: a sweep deletes them.
"""

from dataclasses import asdict, dataclass
from datetime import date

from common.days import days_between
from common.jobs import DateLedger
from common.layout import DataKey, Layout
from common.lifecycle import Lifecycle
from common.logs import get_logger
from common.models import DateState, Manifest
from common.settings import Settings
from common.storage import ObjectStore, open_store

log = get_logger(__name__)


@dataclass
class SweepCounts:
    objects: int = 0
    partials: int = 0
    uploads: int = 0
    kept: int = 0


@dataclass
class _Owners:
    """Decides, for one date, whether what a run wrote may be deleted.

    From the date's state alone (:meth:`Lifecycle.may_commit`): objects of a job that can
    never commit again may go. ``state`` is ``None`` for the commit's sweep, which only
    deletes generations at or below the committed one.
    """

    committed: Manifest | None
    state: DateState | None

    def may_delete(self, owner: DataKey) -> bool:
        if owner.generation is None:
            # Written before generations existed, and not named by the manifest: a run of
            # an older version, which consumers no longer run (upgrades drain them first).
            return True
        if self.committed is not None and owner.generation <= self.committed.generation:
            return True
        if self.state is None or owner.job_id is None:
            return False
        state = self.state
        known = max(
            state.claim.generation if state.claim else 0,
            state.run.generation if state.run else 0,
            state.committed.generation if state.committed else 0,
        )
        if owner.generation > known:
            # A claim made after the state was read (a rebuilt state's floor may already
            # count its objects): it may be running.
            return False
        return not Lifecycle.may_commit(state, owner.job_id, owner.generation)


class Sweeper:
    def __init__(self, store: ObjectStore, layout: Layout, *, dry_run: bool = False) -> None:
        self._store = store
        self._layout = layout
        self.dates_ledger = DateLedger(store, layout)
        self.dry_run = dry_run  # count and log what would go, delete nothing

    async def _delete(self, keys: list[str]) -> None:
        """Every deletion of a sweep goes through here (and the abort below)."""
        if self.dry_run:
            for key in keys:
                log.info("sweep.would_delete", key=key)
            return
        await self._store.delete(keys)

    async def _abort(self, key: str, upload_id: str) -> None:
        if self.dry_run:
            log.info("sweep.would_abort", key=key)
            return
        await self._store.abort_upload(key, upload_id)

    async def after_commit(self, manifest: Manifest) -> SweepCounts:
        """What runs of this generation or older left of the date (the commit's sweep)."""
        return await self._sweep(manifest.date, manifest, None)

    async def final(self, day: date) -> SweepCounts:
        """Everything of the date that neither its committed version nor a live job needs."""
        state, _ = await self.dates_ledger.read(day)
        return await self._sweep(day, state.committed, state)

    async def dates(self) -> list[date]:
        """Every date that has data objects, uploads or partials (for a full sweep)."""
        found: set[date] = set()
        async for item in self._store.list_objects(self._layout.data_root):
            owner = self._layout.parse_data_key(item.key)
            if owner is not None:
                found.add(owner.date)
        for upload in await self._store.pending_uploads(self._layout.data_root):
            owner = self._layout.parse_data_key(upload.key)
            if owner is not None:
                found.add(owner.date)
        async for item in self._store.list_objects(self._layout.partials_root):
            day = self._layout.partial_date(item.key)
            if day is not None:
                found.add(day)
        return sorted(found)

    async def _sweep(
        self, day: date, committed: Manifest | None, state: DateState | None
    ) -> SweepCounts:
        owners = _Owners(committed, state)
        keep: set[str] = set()
        if committed is not None:
            keep = {city.key for city in committed.cities}
            if committed.rejects is not None:
                keep.add(committed.rejects.key)
        counts = SweepCounts()
        layout, store = self._layout, self._store

        stale: list[str] = []
        async for item in store.list_objects(layout.date_data(day)):
            owner = layout.parse_data_key(item.key)
            if item.key in keep or owner is None:
                counts.kept += 1
            elif owners.may_delete(owner):
                stale.append(item.key)
            else:
                counts.kept += 1
        await self._delete(stale)
        counts.objects = len(stale)

        for upload in await store.pending_uploads(layout.date_data(day)):
            owner = layout.parse_data_key(upload.key)
            if owner is not None and owners.may_delete(owner):
                await self._abort(upload.key, upload.upload_id)
                counts.uploads += 1

        # Sums sidecars of earlier versions: nothing reads them any more.
        partials = [item.key async for item in store.list_objects(layout.date_partials(day))]
        await self._delete(partials)
        counts.partials = len(partials)
        log.info(
            "date.swept",
            date=day.isoformat(),
            generation=None if committed is None else committed.generation,
            objects=counts.objects,
            partials=counts.partials,
            uploads=counts.uploads,
            kept=counts.kept,
            dry_run=self.dry_run,
        )
        return counts


async def sweep_dates(
    settings: Settings, start: date | None, end: date | None, *, dry_run: bool = False
) -> dict[str, int]:
    """The final sweep of every date in ``start..end`` (open ends: every date found).

    ``dry_run``: count (and log) what would be deleted, delete nothing.
    """
    totals = SweepCounts()
    async with open_store(settings) as store:
        sweeper = Sweeper(store, Layout(settings.s3_prefix), dry_run=dry_run)
        if start is not None and end is not None:
            days = days_between(start, end)
        else:
            days = [
                day
                for day in await sweeper.dates()
                if (start is None or day >= start) and (end is None or day <= end)
            ]
        for day in days:
            counts = await sweeper.final(day)
            totals.objects += counts.objects
            totals.partials += counts.partials
            totals.uploads += counts.uploads
            totals.kept += counts.kept
    return {"dates": len(days), **asdict(totals)}
