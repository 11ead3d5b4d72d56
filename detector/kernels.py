"""Compiled inner loops of the hot path (numba), one pass over a batch each.

The features of a (vehicle, id, window) group need a dozen comparisons per
frame against the learned baseline. As separate numpy passes each one gathers
the baseline rows for every frame again and materialises an (n, 8) temporary;
fused into one loop over the frames of a group, the baseline row is read once
per group and nothing is materialised. Likewise scikit-learn scores an
isolation forest tree by tree with ~3 ms of Python per call; the traversal
below walks all trees for all rows in one call with the same float32
comparison, so scores are identical.

The numpy definitions these loops implement are the reference: see
``detector.features`` for what each feature means, and tests/test_kernels.py
for the equivalence checks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from detector.baseline import PAIRS, Baseline

_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.int64)


def _crc8_j1850() -> np.ndarray:
    table = np.zeros(256, np.uint8)
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x1D) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table[i] = c
    return table


_CRC8 = _crc8_j1850()


@njit(cache=True, nogil=True)
def _checksum(kind, d, dlc, can_id, pos, crc8):  # pragma: no cover - compiled
    if kind == 2:
        x = 0
        for b in range(8):
            if b < dlc and b != pos:
                x ^= d[b]
        return x & 0xFF
    if kind == 5:
        crc = 0xFF
        for b in range(8):
            if b < dlc and b != pos:
                crc = crc8[(crc ^ d[b]) & 0xFF]
        return crc ^ 0xFF
    s = 0
    for b in range(8):
        if b < dlc and b != pos:
            s += d[b]
    if kind == 3:
        s += (can_id & 0xFF) + ((can_id >> 8) & 0xFF)
    s &= 0xFF
    if kind == 4:
        return (~s) & 0xFF
    return s


@njit(cache=True, nogil=True)
def id_slots(can_id, ids):  # pragma: no cover - compiled
    """``Baseline.slots``: each id's position in the sorted ``ids`` (clipped) and
    whether it is there; a table answers standard ids without a search."""
    n_ids = ids.shape[0]
    lut = np.full(2048, -1, np.int64)
    for k in range(n_ids):
        if ids[k] < 2048:
            lut[ids[k]] = k
    slot = np.zeros(can_id.shape[0], np.int64)
    known = np.zeros(can_id.shape[0], np.bool_)
    for i in range(can_id.shape[0]):
        c = can_id[i]
        k = lut[c] if c < 2048 else -1
        if k < 0 and n_ids > 0:
            k = min(np.searchsorted(ids, c), n_ids - 1)
        elif k >= 0:
            known[i] = True
        if k >= 0:
            slot[i] = k
            if not known[i]:
                known[i] = ids[k] == c
    return slot, known


@njit(cache=True, nogil=True)
def stream_order(key, n_keys, ts):  # pragma: no cover - compiled
    """Counting sort of frames by stream ``key`` (stable), and whether each
    stream's frames were already in time order (else the caller sorts by ts)."""
    counts = np.zeros(n_keys + 1, np.int64)
    for i in range(key.shape[0]):
        counts[key[i] + 1] += 1
    for k in range(n_keys):
        counts[k + 1] += counts[k]
    order = np.empty(key.shape[0], np.int64)
    last = np.full(n_keys, -np.inf)
    in_order = True
    for i in range(key.shape[0]):
        k = key[i]
        if ts[i] < last[k]:
            in_order = False
        last[k] = ts[i]
        order[counts[k]] = i
        counts[k] += 1
    return order, in_order


@njit(cache=True, nogil=True)
def _group_rows(  # pragma: no cover - compiled
    order, stream_first, ts, can_id, dlc, data, label,
    carried, carried_ts, carried_data,
    starts, ends, slot, known, window, window_s,
    period, mean_count, ham_mean, ham_std, change_rate, cond_change,
    byte_min, byte_max, delta_min, delta_max, pairs, pair_min, pair_max, pair_tight,
    counter_byte, counter_mask, counter_shift, counter_step,
    checksum_kind, checksum_byte, has_dict, payload_hashes, dlc_mask,
    popcount, crc8, hash_mul, X, attack, last_ts,
):
    n_pairs_all = pairs.shape[0]
    n_hash = payload_hashes.shape[0]
    chg = np.zeros(8)
    n_other = np.zeros(8)
    cond_num = np.zeros(8)
    changed = np.zeros(8, np.int64)
    prev = np.zeros(8, np.uint8)
    cur = np.zeros(8, np.uint8)
    tight = np.zeros(n_pairs_all, np.int64)
    stream = -1
    for g in range(starts.shape[0]):
        s0 = starts[g]
        e0 = ends[g]
        count = e0 - s0
        lab = label[order[s0]]
        for i in range(s0 + 1, e0):
            if label[order[i]] > lab:
                lab = label[order[i]]
        attack[g] = lab
        last_ts[g] = ts[order[e0 - 1]]
        k = known[g]
        s = slot[g]
        per = period[s]
        if not (np.isfinite(per) and per > 0):
            per = window_s
        cb = counter_byte[s]
        cmask = counter_mask[s]
        cshift = counter_shift[s]
        cmod = (cmask >> cshift) + 1
        ck = checksum_kind[s]
        dict_on = has_dict[s] and n_hash > 0
        slot_hash = np.uint64(s + 1) * hash_mul
        n_dt = 0
        sum_dt = 0.0
        sum_dt2 = 0.0
        min_dt = np.inf
        ham_sum = 0.0
        n_out = 0
        n_delta = 0
        n_pair = 0
        n_counter = 0
        n_checksum = 0
        n_novel = 0
        n_dlc = 0
        for b in range(8):
            chg[b] = 0.0
            n_other[b] = 0.0
            cond_num[b] = 0.0
        n_tight = 0
        for p in range(n_pairs_all):
            if pair_tight[s, p]:
                tight[n_tight] = p
                n_tight += 1
        for i in range(s0, e0):
            j = order[i]
            if stream_first[i]:
                stream += 1
                hp = carried[stream]
                pts = carried_ts[stream]
                for b in range(8):
                    prev[b] = carried_data[stream, b]
            else:
                hp = True
                jp = order[i - 1]
                pts = ts[jp]
                for b in range(8):
                    prev[b] = data[jp, b]
            if not k:
                continue
            for b in range(8):
                cur[b] = data[j, b]
            out = False
            for b in range(8):
                out |= (cur[b] < byte_min[s, b]) | (cur[b] > byte_max[s, b])
            n_out += out
            if hp:
                dt = ts[j] - pts
                n_dt += 1
                sum_dt += dt
                sum_dt2 += dt * dt
                if dt < min_dt:
                    min_dt = dt
                ham = 0
                cnt = 0
                jump = False
                for b in range(8):
                    x = cur[b] ^ prev[b]
                    ham += popcount[x]
                    c = 1 if x != 0 else 0
                    changed[b] = c
                    cnt += c
                    dv = np.int16(cur[b]) - np.int16(prev[b])
                    jump |= (dv < delta_min[s, b]) | (dv > delta_max[s, b])
                ham_sum += ham
                n_delta += jump
                if cnt > 0:
                    for b in range(8):
                        c = changed[b]
                        chg[b] += c
                        if cnt - c > 0:
                            n_other[b] += 1.0
                            cond_num[b] += c
                if cb >= 0:
                    cc = (np.int64(cur[cb]) & cmask) >> cshift
                    cp = (np.int64(prev[cb]) & cmask) >> cshift
                    if (cc - cp) % cmod != counter_step[s]:
                        n_counter += 1
            for q in range(n_tight):
                p = tight[q]
                dv = np.int16(cur[pairs[p, 0]]) - np.int16(cur[pairs[p, 1]])
                if dv < pair_min[s, p] or dv > pair_max[s, p]:
                    n_pair += 1
                    break
            if ck > 0:
                pos = np.int64(checksum_byte[s])
                if pos == -2:
                    pos = np.int64(dlc[j]) - 1
                pos = min(max(pos, 0), 7)
                if _checksum(ck, cur, np.int64(dlc[j]), np.int64(can_id[j]), pos, crc8) != cur[pos]:
                    n_checksum += 1
            if dict_on:
                h = np.uint64(0)
                for b in range(8):
                    h |= np.uint64(cur[b]) << np.uint64(8 * b)
                h ^= slot_hash
                m = np.searchsorted(payload_hashes, h)
                if m >= n_hash:
                    m = n_hash - 1
                if payload_hashes[m] != h:
                    n_novel += 1
            if ((np.int64(dlc_mask[s]) >> np.int64(dlc[j])) & 1) == 0:
                n_dlc += 1
        if not k:  # an id the baseline never saw: only its count and novelty
            X[g, 0] = count
            X[g, 1] = 1.0
            X[g, 2] = 1.0
            X[g, 15] = 1.0
            continue
        pairs_n = max(n_dt, 1)
        mc = mean_count[s]
        X[g, 0] = count / max(mc, 1e-9) if mc > 0 else count
        X[g, 1] = min_dt / per if np.isfinite(min_dt) else 1.0
        mean_dt = sum_dt / n_dt if n_dt > 0 else 0.0
        X[g, 2] = mean_dt / per if n_dt > 0 else 1.0
        if n_dt > 1:
            X[g, 3] = np.sqrt(max(sum_dt2 / n_dt - mean_dt**2, 0.0)) / per
        X[g, 4] = ((window[g] + 1) * window_s - ts[order[e0 - 1]]) / per
        if n_dt > 0:
            X[g, 5] = (ham_sum / pairs_n - ham_mean[s]) / (ham_std[s] + 0.5)
        drop = 0.0
        rise = 0.0
        for b in range(8):
            if n_other[b] >= 3:
                d = cond_change[s, b] - cond_num[b] / max(n_other[b], 1.0)
                if d > drop:
                    drop = d
            r = chg[b] / pairs_n - change_rate[s, b]
            if r > rise:
                rise = r
        X[g, 6] = drop
        X[g, 7] = rise if n_dt > 0 else 0.0
        X[g, 8] = n_out / count
        X[g, 9] = n_delta / pairs_n
        X[g, 10] = n_pair / count
        X[g, 11] = n_counter / pairs_n
        X[g, 12] = n_checksum / count
        X[g, 13] = n_novel / count
        X[g, 14] = n_dlc / count


def group_rows(
    frames: np.ndarray,
    order: np.ndarray,
    stream_first: np.ndarray,
    carried: tuple[np.ndarray, np.ndarray, np.ndarray],
    starts: np.ndarray,
    window: np.ndarray,
    bl: Baseline,
    window_s: float,
    n_features: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame checks and per-group reductions of ``features.present_rows``.

    ``frames[order]`` are grouped by stream and (vehicle, id, window) in time
    order; ``stream_first`` marks each stream's first position in ``order``
    and ``carried`` = (found, ts, data) is the frame before it, per stream, from
    earlier batches. ``starts`` are the groups' first positions and ``window``
    their windows. Returns the feature columns up to the bus features (the
    rest stay 0), the most severe label and the ts of each group's last frame.
    """
    n_groups = len(starts)
    ends = np.r_[starts[1:], len(order)].astype(np.int64)
    slot, known = bl.slots(frames["can_id"][order[starts]])
    X = np.zeros((n_groups, n_features))
    attack = np.zeros(n_groups, np.int8)
    last_ts = np.zeros(n_groups)
    found, s_ts, s_data = carried
    _group_rows(
        order, stream_first, frames["ts"], frames["can_id"], frames["dlc"], frames["data"],
        frames["label"], found, s_ts, s_data,
        starts.astype(np.int64), ends, slot.astype(np.int64), known, window.astype(np.int64),
        float(window_s),
        bl.period, bl.mean_count, bl.ham_mean, bl.ham_std, bl.change_rate, bl.cond_change,
        bl.byte_min, bl.byte_max, bl.delta_min, bl.delta_max, PAIRS, bl.pair_min,
        bl.pair_max, bl.pair_tight, bl.counter_byte, bl.counter_mask, bl.counter_shift,
        bl.counter_step, bl.checksum_kind, bl.checksum_byte, bl.has_dict,
        bl.payload_hashes.astype(np.uint64), bl.dlc_mask, _POPCOUNT, _CRC8, _HASH_MUL,
        X, attack, last_ts,
    )  # fmt: skip
    return X, attack, last_ts


@njit(cache=True, nogil=True)
def _forest_depths(X, right, feature, threshold, nan_left, value, roots, out):  # pragma: no cover
    # Tree-major, so one tree's nodes stay in cache while every row walks it
    # (per row the trees are still added in sklearn's order). A left child is
    # always node + 1 (sklearn builds depth first), so the step is a select,
    # not a branch: the branch would be mispredicted half the time.
    for t in range(roots.shape[0]):
        root = roots[t]
        for r in range(X.shape[0]):
            node = root
            f = feature[node]
            while f >= 0:
                x = X[r, f]
                go_left = (x <= threshold[node]) | (np.isnan(x) & nan_left[node])
                node = node + 1 if go_left else right[node]
                f = feature[node]
            out[r] += value[node]


class CompiledForest:
    """A fitted IsolationForest's trees as flat arrays, for ``forest_raw_scores``."""

    def __init__(self, forest) -> None:
        from sklearn.ensemble._iforest import _average_path_length

        rights, feats, thresholds, nan_lefts, values, roots = [], [], [], [], [], []
        offset = 0
        n_features = forest.n_features_in_
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
            offset += tr.node_count
        self.right = np.concatenate(rights).astype(np.int32)
        self.feature = np.concatenate(feats).astype(np.int32)
        self.threshold = np.concatenate(thresholds).astype(np.float64)
        self.nan_left = np.concatenate(nan_lefts)
        self.value = np.concatenate(values).astype(np.float64)
        self.roots = np.asarray(roots, np.int64)
        self.denominator = len(forest.estimators_) * float(
            _average_path_length([forest._max_samples])[0]
        )

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        """``-forest.score_samples(X)``: sklearn compares float32 features, so do we."""
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        depths = np.zeros(len(X32))
        _forest_depths(
            X32, self.right, self.feature, self.threshold, self.nan_left,
            self.value, self.roots, depths,
        )  # fmt: skip
        if self.denominator == 0:
            return np.full(len(X32), 0.5)
        return 2.0 ** (-depths / self.denominator)
