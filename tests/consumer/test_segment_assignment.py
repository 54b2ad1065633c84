"""Size bookkeeping of consumer/segment_assignment.py (scoring itself: test_pipeline)."""

from __future__ import annotations

import numpy as np

from consumer.segment_assignment import segment_size_changes


def test_size_changes_count_users_joining_and_leaving_each_segment() -> None:
    joined = np.array([3, 3, 1, 2, 1])
    left = np.array([-1, 1, 3, 2, -1])  # two first segments, a 1->3 and a 3->1 swap, a stay
    assert segment_size_changes(joined, left) == {3: 1, 1: 1}  # 2 stayed: no entry
    assert segment_size_changes(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == {}
    # Everyone leaves segment 5 for segment 0 (a retired segment's users re-scored).
    assert segment_size_changes(np.zeros(4, dtype=np.int64), np.full(4, 5)) == {0: 4, 5: -4}
