"""An evaluation that cannot apply to a labelled set says why, instead of failing or writing null.

A source without lesion boxes cannot score localization; one without a 'Normal' class cannot
train a detector on normal images. The stage writes this record where its figures would go
(metrics files, documents), so a reader sees "not applicable, because ..." rather than a gap.
"""
from __future__ import annotations

from typing import Any


def not_applicable(reason: str) -> dict:
    """The record written in place of an evaluation that cannot apply."""
    return {"applicable": False, "reason": reason}


def applies(record: Any) -> bool:
    """False for a ``not_applicable`` record, True for anything else (the figures themselves)."""
    return not (isinstance(record, dict) and record.get("applicable") is False)
