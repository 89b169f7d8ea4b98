"""Condition bookkeeping follows the API conventions."""
from modelloop.status import Cond, changed_conditions, merge_conditions, transition_events


def test_last_transition_time_changes_only_when_status_changes():
    first = merge_conditions(None, [Cond.of("Ready", False, "Training", "x")], 1, now="t1")
    same = merge_conditions(first, [Cond.of("Ready", False, "StillTraining", "y")], 2, now="t2")
    flipped = merge_conditions(same, [Cond.of("Ready", True, "VersionAvailable")], 2, now="t3")
    assert first[0]["lastTransitionTime"] == "t1"
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["reason"] == "StillTraining"
    assert same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_conditions_keep_others_and_sort_ready_first():
    c = merge_conditions(None, [Cond.of("Stalled", False, "Valid"), Cond.of("Ready", True, "Ok"),
                                Cond.of("Reconciling", False, "Idle")], 1, now="t")
    c = merge_conditions(c, [Cond.of("Succeeded", True, "RunSucceeded")], 1, now="t")
    assert [x["type"] for x in c] == ["Ready", "Reconciling", "Stalled", "Succeeded"]


def test_changed_conditions_reports_status_or_reason_changes_only():
    a = merge_conditions(None, [Cond.of("Ready", False, "Training")], 1, now="t")
    b = merge_conditions(a, [Cond.of("Ready", False, "Training", "other message")], 1, now="t")
    c = merge_conditions(b, [Cond.of("Ready", True, "VersionAvailable")], 1, now="t")
    assert changed_conditions(a, b) == []
    assert [x["reason"] for x in changed_conditions(b, c)] == ["VersionAvailable"]



def _c(type_: str, status: str, reason: str, message: str = "") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def test_transition_events_one_per_thing_that_happened():
    before = [_c("Ready", "True", "Serving", "v1"), _c("Stalled", "False", "Serving")]
    rolling = [_c("Ready", "False", "RollingOut", "v2 is rolling out"), _c("Stalled", "False", "Progressing"),
               _c("Reconciling", "True", "RollingOut", "v2")]
    assert transition_events(before, rolling, decided=False) == [("Normal", "RollingOut", "v2 is rolling out")]
    assert transition_events(before, rolling, decided=True) == []        # Promoted said it already
    stalled = [_c("Ready", "False", "InvalidSpec", "bad n_trees"), _c("Stalled", "True", "InvalidSpec", "bad n_trees"),
               _c("Reconciling", "True", "StorageUnavailable", "the store did not answer")]
    assert transition_events(before, stalled, decided=True) == [        # Warnings always, each once
        ("Warning", "InvalidSpec", "bad n_trees"), ("Warning", "StorageUnavailable", "the store did not answer")]
