"""Finding the weekly tranches in the store: the newest (to train on), the one before (drift)
and those within the history window (rare parts borrow their rows).

A tranche key is ``datasets/time_to_dispatch_<ISO timestamp>.csv``. Accepted
timestamps, with the same result on every Python version: extended or compact
ISO 8601 dates with an optional time (``T``, ``_`` or a space before it, seconds and
fractions optional) and an optional ``Z`` or ``+HH:MM`` / ``+HHMM`` / ``+HH`` offset,
e.g. ``2026-11-20T23:00:00``, ``2026-11-20T23:00:00+01:00``, ``2026-11-20T23:00:00Z``,
``20261120T230000Z``. A timestamp without an offset is taken as UTC.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Iterable, List, NamedTuple, Optional, Tuple

from pipeline.artefacts import DATASETS_PREFIX
from pipeline.store import Store

TRANCHE_PREFIX = f"{DATASETS_PREFIX}time_to_dispatch_"
TRANCHE_SUFFIX = ".csv"
_SHOWN = 10

log = logging.getLogger(__name__)

_TIMESTAMP = re.compile(
    r"(?P<y>\d{4})(?P<d1>-?)(?P<m>\d{2})(?P=d1)(?P<d>\d{2})"
    r"(?:[T_ ](?P<H>\d{2})"
    r"(?:(?P<t1>:?)(?P<M>\d{2})(?:(?P=t1)(?P<S>\d{2})(?:[.,](?P<f>\d{1,6}))?)?)?)?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)?"
)


class Tranche(NamedTuple):
    """A tranche key and the moment it names (timezone-aware, UTC)."""

    key: str
    timestamp: datetime


class TrancheChoice(NamedTuple):
    """The newest tranche, the one before it, the keys ignored as unparseable, and every
    tranche found (oldest first)."""

    latest: Optional[Tranche]
    previous: Optional[Tranche]
    ignored: Tuple[str, ...]
    found: Tuple[Tranche, ...] = ()

    def within_weeks(self, weeks: int) -> Tuple[Tranche, ...]:
        """The tranches before the newest, newest first, at most ``weeks`` weeks older than it.

        A tranche exactly ``weeks`` x 7 days older is in; none when ``weeks`` is 0.
        """
        if self.latest is None or weeks <= 0:
            return ()
        start = self.latest.timestamp - timedelta(weeks=weeks)
        return tuple(
            t for t in reversed(self.found)
            if t != self.latest and start <= t.timestamp <= self.latest.timestamp
        )


def parse_timestamp(text: str) -> Optional[datetime]:
    """The UTC moment an ISO 8601 timestamp names, or None if it is not one."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        return None
    g = match.groupdict()
    canonical = (
        f"{g['y']}-{g['m']}-{g['d']}T{g['H'] or '00'}:{g['M'] or '00'}:{g['S'] or '00'}"
        f".{(g['f'] or '0').ljust(6, '0')}"
    )
    if g["sign"]:
        canonical += f"{g['sign']}{g['oh']}:{g['om'] or '00'}"
    try:
        moment = datetime.fromisoformat(canonical)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def tranche_timestamp(key: str) -> Optional[datetime]:
    """The moment a tranche key names, or None if the key is not a tranche key."""
    if not (key.startswith(TRANCHE_PREFIX) and key.endswith(TRANCHE_SUFFIX)):
        return None
    return parse_timestamp(key[len(TRANCHE_PREFIX):-len(TRANCHE_SUFFIX)])


def choose_tranches(keys: Iterable[str]) -> TrancheChoice:
    """The newest and second-newest tranche by timestamp (ties broken by key)."""
    found: List[Tranche] = []
    ignored: List[str] = []
    for key in keys:
        moment = tranche_timestamp(key)
        if moment is None:
            ignored.append(key)
        else:
            found.append(Tranche(key, moment))
    found.sort(key=lambda t: (t.timestamp, t.key))
    latest = found[-1] if found else None
    previous = found[-2] if len(found) > 1 else None
    return TrancheChoice(latest, previous, tuple(ignored), tuple(found))


def find_tranches(store: Store) -> TrancheChoice:
    """List the store's datasets and choose; unparseable keys are logged as a warning."""
    choice = choose_tranches(store.list_keys(DATASETS_PREFIX))
    if choice.ignored:
        shown = ", ".join(choice.ignored[:_SHOWN])
        more = len(choice.ignored) - _SHOWN
        log.warning(
            "ignoring %d key(s) under %s that are not tranche keys "
            "(datasets/time_to_dispatch_<ISO timestamp>.csv): %s%s",
            len(choice.ignored), store.location(DATASETS_PREFIX), shown,
            f" and {more} more" if more > 0 else "",
        )
    latest, previous = choice.latest, choice.previous
    if latest is not None and previous is not None and latest.timestamp == previous.timestamp:
        log.warning(
            "tranches %s and %s name the same moment; using %s", previous.key, latest.key,
            latest.key,
        )
    return choice
