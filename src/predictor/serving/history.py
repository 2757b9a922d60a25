"""What the features of contacts being scored read of the store, and no more.

``features.build`` needs two things of history: the scored customers' own contacts (all time), and their
agents' closed repeat windows in the look-back. Deriving the windows from the contacts behind them took the
rows of every customer the agents served (hundreds to thousands a /score); the store keeps them instead
(``ContactStore.keep_windows``), derived by the same function the first time they are read, and ``build``
counts them beside the windows it derives of the scored customers: the features equal those of the whole
store (tested).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import numpy as np
import pandas as pd

from predictor.config import LabelConfig
from predictor.contacts.labels import ContactArrays, epoch_us
from predictor.contacts.store import ContactStore
from predictor.features.build import LOOKBACK_DAYS, WINDOW_COLUMNS, closed_windows, days_us, join_windows

# Contacts a little older than the windows strictly need are looked at too: the labels round to the
# millisecond, and reading a few extra windows costs nothing (the rate counts only those in range).
SLACK_US = 1_000_000


def labels_key(labels: LabelConfig) -> str:
    """The label rules a kept window was derived under (another model's rules need their own)."""
    return f"w{labels.repeat_window_days:g}d-g{labels.transfer_gap_minutes:g}m"


def scoring_history(
    store: ContactStore, contacts: pd.DataFrame, labels: LabelConfig
) -> tuple[ContactArrays, dict[str, np.ndarray]]:
    """What ``build`` needs of the store to describe ``contacts``: their customers' contacts (its ``history``)
    and their agents' closed windows of other customers (its ``other_windows``, ``WINDOW_COLUMNS`` as arrays)."""
    known = store.customers_history(contacts)
    if contacts.empty:
        return known, join_windows()
    key = labels_key(labels)
    t = epoch_us(contacts["closed_at"])
    window = days_us(labels.repeat_window_days)
    after, until = int(t.min()) - days_us(LOOKBACK_DAYS) - 1, int(t.max())
    agents = list(dict.fromkeys(contacts["agent_id"].tolist()))  # in order, once each

    # Windows of the agents' contacts that ended by now and are not kept yet: derived from all of their
    # customers' contacts, used as derived and kept for the next caller. The scored customers' own windows
    # ``build`` derives from their contacts as this call has them.
    scored = {store.pseudonym(c) for c in set(contacts["customer_id"].tolist())}
    found = store.unwindowed_customers(agents, key, _at(after - window - SLACK_US), _at(until - window + SLACK_US))
    missing = [p for p in found if p not in scored]
    # Windows every contact here counts (ended within the look-back of the latest and by the earliest close)
    # are read pooled: a busy agent's months of windows are one row.
    pooled = (int(t.max()) - days_us(LOOKBACK_DAYS), int(t.min()))
    kept = store.kept_windows(agents, key, after, until, except_pseudonyms=scored | set(missing), pooled=pooled)
    if not missing:
        return known, kept
    rows = store.pseudonymous_history(missing)
    windows = closed_windows(rows, labels, as_of=pd.Timestamp(until, unit="us", tz="UTC"))
    store.keep_windows(windows, key, dict(Counter(rows.customer_id.tolist())))
    # A set, not np.isin: on object arrays it sorts (8 ms for a batch's 20k windows; pandas' isin pays ~0.1 ms
    # a call for a /score's few).
    wanted = set(agents)
    ours = np.fromiter((agent in wanted for agent in windows["agent_id"]), bool, len(windows["agent_id"]))
    return known, join_windows(kept, {column: windows[column][ours] for column in WINDOW_COLUMNS})


def _at(us: int) -> datetime:
    return pd.Timestamp(us, unit="us", tz="UTC").to_pydatetime()
