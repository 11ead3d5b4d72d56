"""An isolation forest's trees walked in one compiled call for all rows.

scikit-learn scores a forest tree by tree with ~3 ms of Python per call; the
walk below takes every tree for every row in one call with the same float32
comparison, so scores are identical (tests/test_kernels.py checks it).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _forest_depths(X, meta, thr32, nan_left, value, roots, out):  # pragma: no cover - compiled
    # Tree-major, so one tree's nodes stay in cache while every row walks it
    # (per row the trees are still added in sklearn's order). A left child is
    # always node + 1 (sklearn builds depth first), so the step is a select,
    # not a mispredicted branch. ``meta`` packs a node's right child and
    # feature (-1 at a leaf), one load per step; ``thr32`` is the largest
    # float32 <= sklearn's float64 threshold, so for a float32 x ``x <= thr32``
    # is exactly sklearn's ``x <= threshold``. A NaN goes where sklearn sends it.
    for t in range(roots.shape[0]):
        root = roots[t]
        for r in range(X.shape[0]):
            node = root
            mt = meta[node]
            while mt >= 0:
                x = X[r, mt & 0xFF]
                go_left = (x <= thr32[node]) | (np.isnan(x) & nan_left[node])
                node = node + 1 if go_left else mt >> 8
                mt = meta[node]
            out[r] += value[node]


#: Rows walked together through one tree (their X rows and positions stay in L1).
_WALK_BLOCK = 256


@njit(cache=True, nogil=True)
def _forest_depths_finite(X, step, thr_step, value, roots, depth, out):  # pragma: no cover
    # For finite X. Level by level: every row of a block takes one step down the
    # tree before any takes the next, so the steps are independent loads the CPU
    # overlaps, instead of one row's chain of dependent loads and unpredictable
    # branches (2x faster). A leaf steps to itself (its threshold is -inf, its
    # right child itself), so each tree takes exactly its depth in steps. Node
    # numbers and steps are int32: half the bytes per step of int64 (25 % less
    # time a row, measured with bit-identical depths).
    n = X.shape[0]
    nodes = np.empty(_WALK_BLOCK, np.int32)
    for r0 in range(0, n, _WALK_BLOCK):
        m = min(_WALK_BLOCK, n - r0)
        Xb = X[r0 : r0 + m]
        for t in range(roots.shape[0]):
            root = np.int32(roots[t])
            for r in range(m):
                nodes[r] = root
            for _ in range(depth[t]):
                for r in range(m):
                    nd = nodes[r]
                    st = step[nd]
                    nodes[r] = nd + np.int32(1) if Xb[r, st & 0xFF] <= thr_step[nd] else st >> np.int32(8)
            for r in range(m):
                out[r0 + r] += value[nodes[r]]


@njit(cache=True, nogil=True)
def _forest_depths_bounded(X, step, thr_step, value, roots, depth, tail_min, limit, out):  # pragma: no cover
    # _forest_depths_finite for a caller that only asks which rows score above a
    # level: a row whose depth sum, plus the least the trees still to come can add
    # (``tail_min[t + 1]``), reaches ``limit`` can no longer score above it, and
    # leaves the walk with that lower bound (>= limit) as its sum. A typical row
    # of a trained platform leaves after ~40 % of the trees. Rows that stay are
    # summed in the same order as the full walk: bit-identical depths.
    n = X.shape[0]
    nodes = np.empty(_WALK_BLOCK, np.int32)
    act = np.empty(_WALK_BLOCK, np.int64)
    for r0 in range(0, n, _WALK_BLOCK):
        na = min(_WALK_BLOCK, n - r0)
        for i in range(na):
            act[i] = r0 + i
        for t in range(roots.shape[0]):
            root = np.int32(roots[t])
            for i in range(na):
                nodes[i] = root
            for _ in range(depth[t]):
                for i in range(na):
                    nd = nodes[i]
                    st = step[nd]
                    nodes[i] = nd + np.int32(1) if X[act[i], st & 0xFF] <= thr_step[nd] else st >> np.int32(8)
            rest = tail_min[t + 1]
            k = 0
            for i in range(na):
                r = act[i]
                out[r] += value[nodes[i]]
                if out[r] + rest < limit:
                    act[k] = r
                    nodes[k] = nodes[i]
                    k += 1
                else:
                    out[r] += rest
            na = k
            if na == 0:
                break


class CompiledForest:
    """A fitted IsolationForest's trees as flat arrays, for ``raw_scores``."""

    def __init__(self, forest) -> None:
        from sklearn.ensemble._iforest import _average_path_length

        rights, feats, thresholds, nan_lefts, values, roots, depths = [], [], [], [], [], [], []
        offset = 0
        n_features = forest.n_features_in_
        if n_features > 255:
            raise ValueError(f"{n_features} features: the packed walk indexes at most 255")
        subsample = forest._max_features != n_features
        for t, tree in enumerate(forest.estimators_):
            tr = tree.tree_
            nodes = tr.__getstate__()["nodes"]
            leaf = tr.children_left < 0
            if not (leaf | (tr.children_left == np.arange(tr.node_count) + 1)).all():
                raise ValueError("isolation tree not laid out depth first (left child = node + 1)")
            rights.append(np.where(leaf, -1, tr.children_right + offset))
            f = np.maximum(tr.feature, 0)
            if subsample:  # the tree saw only its own columns, in its own order
                f = np.asarray(forest.estimators_features_[t])[f]
            feats.append(np.where(leaf, -1, f))
            thresholds.append(tr.threshold)
            if "missing_go_to_left" in nodes.dtype.names:
                nan_lefts.append(nodes["missing_go_to_left"].astype(bool))
            else:
                nan_lefts.append(np.zeros(tr.node_count, bool))
            # what sklearn adds per tree for a sample ending in that leaf
            values.append(forest._decision_path_lengths[t] + forest._average_path_length_per_tree[t] - 1.0)
            roots.append(offset)
            depths.append(tr.max_depth)
            offset += tr.node_count
        right = np.concatenate(rights).astype(np.int64)
        feature = np.concatenate(feats).astype(np.int64)
        threshold = np.concatenate(thresholds).astype(np.float64)
        self.nan_left = np.concatenate(nan_lefts)
        self.value = np.concatenate(values).astype(np.float64)
        self.roots = np.asarray(roots, np.int64)
        self.meta = np.where(feature < 0, -1, (right << 8) | feature)
        thr32 = threshold.astype(np.float32)
        above = thr32.astype(np.float64) > threshold  # rounded up: step down one ulp
        thr32[above] = np.nextafter(thr32[above], np.float32(-np.inf))
        self.thr32 = thr32
        # the level-by-level walk's form: a leaf is a split sending every finite x to itself
        leaf = self.meta < 0
        if len(self.meta) >= 1 << 23:
            raise ValueError(f"{len(self.meta)} nodes: the int32 walk packs at most 2**23")
        self.step = np.where(leaf, np.arange(len(self.meta)) << 8, self.meta).astype(np.int32)
        self.thr_step = np.where(leaf, np.float32(-np.inf), thr32).astype(np.float32)
        self.depth = np.asarray(depths, np.int64)
        # the least each tree adds (its shallowest leaf's value), summed over the trees
        # from t on: what a row's depth sum will at least grow by after tree t - 1
        least = np.array([v[tr.tree_.children_left < 0].min() for v, tr in
                          zip(values, forest.estimators_, strict=True)], np.float64)  # fmt: skip
        self.tail_min = np.r_[np.cumsum(least[::-1])[::-1], 0.0]
        self.denominator = len(forest.estimators_) * float(
            _average_path_length([forest._max_samples])[0]
        )

    def raw_scores(self, X: np.ndarray, floor: float | None = None) -> np.ndarray:
        """``-forest.score_samples(X)``: sklearn compares float32 features, so do we.

        ``floor``: the caller only needs scores above it; a row whose score cannot
        exceed it stops being walked and scores some value <= ``floor``."""
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        depths = np.zeros(len(X32))
        limit = self._depth_limit(floor)
        if np.isfinite(X32).all() and limit < np.inf:
            _forest_depths_bounded(
                X32, self.step, self.thr_step, self.value, self.roots, self.depth,
                self.tail_min, limit, depths,
            )  # fmt: skip
        elif np.isfinite(X32).all():
            _forest_depths_finite(
                X32, self.step, self.thr_step, self.value, self.roots, self.depth, depths
            )
        else:  # NaN or +-inf (float32 overflow): the node-by-node walk, which takes both
            _forest_depths(X32, self.meta, self.thr32, self.nan_left, self.value, self.roots, depths)
        if self.denominator == 0:
            return np.full(len(X32), 0.5)
        return 2.0 ** (-depths / self.denominator)

    def _depth_limit(self, floor: float | None) -> float:
        """The depth sum from which a row scores <= ``floor`` (inf: walk every tree)."""
        if floor is None or not 0.0 < floor < 1.0 or self.denominator == 0:
            return np.inf
        limit = -np.log2(floor) * self.denominator
        while 2.0 ** (-limit / self.denominator) > floor:  # rounding: never a row above it
            limit = np.nextafter(limit, np.inf)
        return float(limit)
