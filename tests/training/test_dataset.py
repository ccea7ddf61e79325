"""training.dataset on frames built by hand: the label rule and the join back onto the label rows."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from etl import spec
from training import dataset

MONTHS = [datetime(2026, m, 28, tzinfo=timezone.utc) for m in range(1, 8)]  # extractions 0..6


def exports(history: dict[int, str]) -> pd.DataFrame:
    """Rows per extraction from a string per employee: 's' stays, 'L' left at that extraction, '.' absent."""
    rows = [{spec.ENTITY_KEY: employee, spec.TIMESTAMP: MONTHS[i], spec.LABEL: int(mark == "L")}
            for employee, marks in history.items() for i, mark in enumerate(marks) if mark != "."]
    return pd.DataFrame(rows)


def labels(history: dict[int, str], horizon: int) -> dict[tuple[int, int], int]:
    rows = dataset.labels_from(exports(history), horizon)
    return {(r[spec.ENTITY_KEY], MONTHS.index(r[spec.TIMESTAMP])): r[dataset.LABEL] for r in rows.to_dict("records")}


def test_a_leaver_is_positive_exactly_within_the_horizon_before_leaving():
    got = labels({1: "sssssLL"}, horizon=2)  # left at extraction 5
    # Rows 0..4 have both later extractions known; 3 and 4 see the leaving within 2.
    assert got == {(1, 0): 0, (1, 1): 0, (1, 2): 0, (1, 3): 1, (1, 4): 1}


def test_rows_after_leaving_and_rows_whose_outcome_is_unknown_are_dropped():
    got = labels({1: "ssLL...", 2: "sssssss"}, horizon=3)
    assert got == {(1, 0): 1, (1, 1): 1, (2, 0): 0, (2, 1): 0, (2, 2): 0, (2, 3): 0}


def test_the_first_leaving_extraction_counts_and_a_horizon_of_one_sees_only_the_next():
    got = labels({1: "sLsLsss", 2: "ssssssL"}, horizon=1)
    assert got == {(1, 0): 1, (2, 0): 0, (2, 1): 0, (2, 2): 0, (2, 3): 0, (2, 4): 0, (2, 5): 1}


def test_label_rows_are_ordered_by_time_then_employee_with_a_fresh_index():
    rows = dataset.labels_from(exports({9: "sssss..", 3: "sssss..", 5: "sssssss"}), horizon=1)
    keys = list(zip(rows[spec.TIMESTAMP].map(MONTHS.index), rows[spec.ENTITY_KEY]))
    assert keys == sorted(keys) and keys[:3] == [(0, 3), (0, 5), (0, 9)]
    assert list(rows.index) == list(range(len(rows)))
    assert list(rows.columns) == [spec.ENTITY_KEY, spec.TIMESTAMP, dataset.LABEL]
    assert rows[dataset.LABEL].dtype == np.int64


def test_join_back_keeps_every_label_row_in_order_with_nulls_where_nothing_was_retrieved():
    entity = pd.DataFrame({spec.ENTITY_KEY: [2, 1, 3], spec.TIMESTAMP: [MONTHS[1], MONTHS[0], MONTHS[2]],
                           dataset.LABEL: [1, 0, 0]})
    # As an offline store answers: other order, naive timestamps, extra columns, a row missing.
    retrieved = pd.DataFrame({spec.ENTITY_KEY: [1, 2], spec.TIMESTAMP: [MONTHS[0].replace(tzinfo=None),
                                                                         MONTHS[1].replace(tzinfo=None)],
                              "b": [10.0, 20.0], "a": [1.0, 2.0], "unused": [0, 0]})
    joined = dataset.join_back(entity, retrieved, ["a", "b"])
    assert list(joined.columns) == [spec.ENTITY_KEY, spec.TIMESTAMP, dataset.LABEL, "a", "b"]
    assert joined[spec.ENTITY_KEY].tolist() == [2, 1, 3] and joined[dataset.LABEL].tolist() == [1, 0, 0]
    assert joined["a"].tolist()[:2] == [2.0, 1.0] and joined["b"].tolist()[:2] == [20.0, 10.0]
    assert joined[["a", "b"]].iloc[2].isna().all()
    assert joined[spec.TIMESTAMP].tolist() == [MONTHS[1], MONTHS[0], MONTHS[2]]


def test_join_back_refuses_an_answer_with_two_rows_for_one_label_row():
    entity = pd.DataFrame({spec.ENTITY_KEY: [1], spec.TIMESTAMP: [MONTHS[0]]})
    retrieved = pd.DataFrame({spec.ENTITY_KEY: [1, 1], spec.TIMESTAMP: [MONTHS[0]] * 2, "a": [1.0, 2.0]})
    with pytest.raises(pd.errors.MergeError):
        dataset.join_back(entity, retrieved, ["a"])


def test_join_back_takes_label_times_without_a_zone_as_utc():
    entity = pd.DataFrame({spec.ENTITY_KEY: [1], spec.TIMESTAMP: [MONTHS[0].replace(tzinfo=None)]})
    retrieved = pd.DataFrame({spec.ENTITY_KEY: [1], spec.TIMESTAMP: [MONTHS[0]], "a": [1.0]})
    joined = dataset.join_back(entity, retrieved, ["a"])
    assert joined["a"].tolist() == [1.0] and joined[spec.TIMESTAMP].tolist() == [MONTHS[0]]


def test_join_back_says_when_the_offline_store_lost_rows(caplog):
    entity = pd.DataFrame({spec.ENTITY_KEY: [1, 2], spec.TIMESTAMP: [MONTHS[0], MONTHS[0]]})
    complete = pd.DataFrame({spec.ENTITY_KEY: [1, 2], spec.TIMESTAMP: [MONTHS[0]] * 2, "a": [1.0, 2.0]})
    with caplog.at_level("WARNING", logger="training.dataset"):
        dataset.join_back(entity, complete, ["a"])
        assert caplog.messages == []
        dataset.join_back(entity, complete.iloc[:1], ["a"])
    assert caplog.messages == ["the offline store returned 1 rows for 2 label rows; missing rows kept with nulls"]
