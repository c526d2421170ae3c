"""Observed actions against actions annotated by a person: per action type, each annotated
action found once, missed, split (seen as two or more) or merged (one observed event
covering two), observed events with nothing annotated there (extra), and how far each
observed start lies from the annotated one.

The annotations are a CSV of labels only (`path,action,start_s,end_s`; a clip watched and
found to hold no action has one row with the action `none`), as in
`benchmarks/data/events_dev.csv`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portrait.challenge import ACTIONS

NONE = "none"  # a clip that was annotated and holds no action
TOLERANCE_S = 0.2  # an observed event and an annotated one overlap within this margin
OUTCOMES = ("found_once", "missed", "split", "merged")


@dataclass(frozen=True)
class Span:
    action: str
    start_s: float
    end_s: float


def read_annotations(path: Path) -> dict[str, list[Span]]:
    """Clip path -> its annotated actions, in order of start."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or any(c not in rows[0] for c in ("path", "action", "start_s", "end_s")):
        raise ValueError(f"{path}: expected columns path,action,start_s,end_s")
    clips: dict[str, list[Span]] = {}
    for number, row in enumerate(rows, start=2):
        action = row["action"].strip()
        spans = clips.setdefault(row["path"].strip(), [])
        if action == NONE:
            continue
        if action not in ACTIONS:
            raise ValueError(f"{path}:{number}: unknown action {action!r}")
        start, end = float(row["start_s"]), float(row["end_s"])
        if end < start:
            raise ValueError(f"{path}:{number}: ends before it starts")
        spans.append(Span(action, start, end))
    return {clip: sorted(spans, key=lambda s: s.start_s) for clip, spans in clips.items()}


def _overlap(first: Span, second: Span, tolerance_s: float) -> float:
    """Seconds the two spans share, each widened by `tolerance_s` (negative: apart)."""
    return min(first.end_s, second.end_s) - max(first.start_s, second.start_s) + 2 * tolerance_s


def match_clip(annotated: list[Span], observed: list[Span], tolerance_s: float = TOLERANCE_S) -> dict:
    """One clip: per action type, the outcome of each annotated action, the extra observed
    events and the onset errors (observed start minus annotated start) of those found once.

    Each observed event goes to the annotated action of its type it overlaps most (within the
    tolerance). An annotated action given one event is found once, two or more split, none
    missed, or merged when an event given to another annotated action truly overlaps it.
    An observed event overlapping no annotated action is extra."""
    result: dict[str, dict] = {}
    for action in sorted({s.action for s in annotated} | {s.action for s in observed}):
        mine = [s for s in annotated if s.action == action]
        seen = [s for s in observed if s.action == action]
        given: list[list[int]] = [[] for _ in mine]
        extra = 0
        for k, event in enumerate(seen):
            shares = [_overlap(a, event, tolerance_s) for a in mine]
            if not shares or max(shares) < 0:
                extra += 1
            else:
                given[int(np.argmax(shares))].append(k)
        outcome = {name: 0 for name in OUTCOMES}
        onsets = []
        for a, events in zip(mine, given):
            if len(events) == 1:
                outcome["found_once"] += 1
                onsets.append(round(seen[events[0]].start_s - a.start_s, 3))
            elif len(events) > 1:
                outcome["split"] += 1
            elif any(_overlap(a, event, 0.0) > 0 for event in seen):
                outcome["merged"] += 1
            else:
                outcome["missed"] += 1
        result[action] = {"annotated": len(mine), **outcome, "extra": extra, "onset_errors_s": onsets}
    return result


def summarise(per_clip: dict[str, dict]) -> dict:
    """Per action type over all clips: counts, recall (annotated actions seen at all) and
    onset errors (each, signed, and the median and largest absolute, seconds)."""
    table: dict[str, dict] = {}
    for clip in per_clip.values():
        for action, row in clip.items():
            total = table.setdefault(action, {"annotated": 0, **{n: 0 for n in OUTCOMES}, "extra": 0,
                                              "onset_errors_s": []})
            for key in ("annotated", *OUTCOMES, "extra"):
                total[key] += row[key]
            total["onset_errors_s"] += row["onset_errors_s"]
    for row in table.values():
        row["onset_errors_s"] = sorted(row["onset_errors_s"])
        errors = np.abs(np.array(row["onset_errors_s"], float))
        row["recall"] = round((row["annotated"] - row["missed"]) / row["annotated"], 3) if row["annotated"] else None
        row["onset_abs_median_s"] = round(float(np.median(errors)), 3) if len(errors) else None
        row["onset_abs_max_s"] = round(float(errors.max()), 3) if len(errors) else None
    return dict(sorted(table.items(), key=lambda item: ACTIONS.index(item[0])))
