"""The article's worked example, done correctly.

Users (1,2), (2,3), (3,1), (4,4); K = 3; initial centres (1,2), (2,3), (3,1). One Lloyd update
gives clusters {1}, {2,4}, {3} with centres (1,2), (3,3.5), (3,1), and the next assignment is
unchanged: converged. (The article's printed arithmetic is wrong; this is the right answer.)
"""

import numpy as np
from sklearn.cluster import KMeans

from model.segmenter import StreamingSegmenter, limit_threads, nearest_centers

USERS = np.array([[1.0, 2.0], [2.0, 3.0], [3.0, 1.0], [4.0, 4.0]])
INITIAL = np.array([[1.0, 2.0], [2.0, 3.0], [3.0, 1.0]])
EXPECTED_CENTRES = np.array([[1.0, 2.0], [3.0, 3.5], [3.0, 1.0]])
EXPECTED_LABELS = np.array([0, 1, 2, 1])  # user 1 -> c0, users 2 and 4 -> c1, user 3 -> c2


def test_sklearn_kmeans_converges_to_the_correct_answer() -> None:
    with limit_threads(1):
        km = KMeans(n_clusters=3, init=INITIAL, n_init=1).fit(USERS)
    np.testing.assert_allclose(km.cluster_centers_, EXPECTED_CENTRES)
    np.testing.assert_array_equal(km.labels_, EXPECTED_LABELS)
    assert km.inertia_ == 0.0 + 1.25 + 1.25 + 0.0


def test_own_assignment_code_runs_lloyd_to_the_same_answer() -> None:
    centres = INITIAL.copy()
    positions, d2 = nearest_centers(USERS, centres)
    # First assignment: user 4 (4,4) is at squared distance 13, 5, 10 -> centre (2,3).
    np.testing.assert_array_equal(positions, EXPECTED_LABELS)
    np.testing.assert_allclose(d2, [0.0, 0.0, 0.0, 5.0])
    centres = np.array([USERS[positions == k].mean(axis=0) for k in range(3)])
    np.testing.assert_allclose(centres, EXPECTED_CENTRES)
    again, d2 = nearest_centers(USERS, centres)
    np.testing.assert_array_equal(again, positions)  # converged after one update
    np.testing.assert_allclose(d2, [0.0, 1.25, 0.0, 1.25])


def test_streaming_segmenter_fit_from_the_given_centres() -> None:
    seg = StreamingSegmenter(n_clusters=3, init=INITIAL).fit(USERS)
    np.testing.assert_allclose(seg.cluster_centers_, EXPECTED_CENTRES)
    np.testing.assert_array_equal(seg.predict(USERS), EXPECTED_LABELS)
    np.testing.assert_array_equal(seg.counts_, [1.0, 2.0, 1.0])
    ids, dist = seg.assign(USERS)
    np.testing.assert_array_equal(ids, seg.ids_[EXPECTED_LABELS])
    np.testing.assert_allclose(dist, np.sqrt([0.0, 1.25, 0.0, 1.25]))
