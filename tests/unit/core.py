"""Shared helpers for tests of the pure core."""

from __future__ import annotations

from typing import Any

from config.rules import load_rules
from models.fold import apply_order
from models.segment_model import SegmentModel, bootstrap_calibration
from tests.factories import model

RULES = load_rules()
MODEL = SegmentModel(RULES, bootstrap_calibration(RULES, "default"))


def fold(events: list[dict[str, Any]], state: Any = None, segment_model: SegmentModel = MODEL):  # type: ignore[no-untyped-def]
    """Apply wire-format events in order; returns the final state and all transitions."""
    transitions = []
    for event in events:
        state, emitted = apply_order(state, model(event), segment_model)
        transitions += emitted
    return state, transitions


def segment_moves(transitions: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (t.from_segment, t.to_segment, t.cause.kind)
        for t in transitions
        if t.type == "segment_changed"
    ]


def segment_changes(transitions: list[Any]) -> list[Any]:
    return [t for t in transitions if t.type == "segment_changed"]
