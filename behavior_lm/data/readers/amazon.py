"""Amazon reviews: the JSON-lines dumps and the ratings-only CSVs."""
from __future__ import annotations


from behavior_lm.data.events import EventLog
from behavior_lm.data.readers.delimited import _read_fixed
from behavior_lm.data.readers.files import PathLike, _existing, _suffix
from behavior_lm.data.readers.table import _read_table


def read_amazon_reviews(path: PathLike, *, item_first: bool = False) -> EventLog:
    """Read Amazon reviews: the JSON-lines dumps (2014 and 2018: ``reviewerID``, ``asin``,
    ``unixReviewTime``, ``overall``) or, for a ``.csv`` file, the headerless ratings-only CSV
    ``user,item,rating,timestamp`` (2014). The 2018 ratings-only CSVs put the item first
    (``item,user,rating,timestamp``): pass ``item_first=True`` for those. value = rating."""
    p = _existing(path)
    if _suffix(p) == ".csv":
        layout = (("item_id", "user_id") if item_first else ("user_id", "item_id"))
        return _read_fixed(p, sep=",", layout=layout + ("value", "timestamp"),
                           what="comma-separated")
    return _read_table(p, fmt="jsonl", behavior_map=None, sep=None, header=True, names=None,
                       columns={"user_id": "reviewerID", "item_id": "asin",
                                "timestamp": "unixReviewTime", "value": "overall"})
