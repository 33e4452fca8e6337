"""Metrics against brute-force definitions on random data, plus perfect and inverted predictions."""

import numpy as np
import pytest

from evaluation import metrics

# ---------------------------------------------------------------------------------------------
# brute-force references: written straight from the definitions, no shortcuts


def brute_ap(scores, targets):
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel().astype(bool)
    ap, prev_recall = 0.0, 0.0
    for v in sorted(set(s.tolist()), reverse=True):
        predicted = s >= v
        tp = np.sum(predicted & t)
        precision = tp / predicted.sum()
        recall = tp / t.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def brute_best_iou(scores, targets, n=20):
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel().astype(bool)
    best = 0.0
    for thr in np.linspace(s.min(), s.max(), n):
        p = s > thr
        union = np.sum(p | t)
        best = max(best, 1.0 if union == 0 else np.sum(p & t) / union)
    return best


def brute_recall(scores, k):
    n = scores.shape[0]
    i2a = np.mean([j in np.argsort(-scores[:, j], kind="stable")[:k] for j in range(n)])
    a2i = np.mean([i in np.argsort(-scores[i, :], kind="stable")[:k] for i in range(n)])
    return i2a, a2i


# ---------------------------------------------------------------------------------------------
# average precision


@pytest.mark.parametrize("seed", range(6))
def test_ap_matches_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    # coarse quantization gives many ties, the case where implementations usually differ
    scores = np.round(rng.random(n), int(rng.integers(1, 4)))
    targets = rng.random(n) < rng.uniform(0.05, 0.6)
    targets[0] = True
    assert metrics.binary_average_precision(scores, targets) == pytest.approx(brute_ap(scores, targets), abs=1e-12)


def test_ap_known_value():
    # sklearn / torchmetrics textbook example: AP = 0.8333...
    assert metrics.binary_average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)


def test_ap_perfect_inverted_and_constant():
    rng = np.random.default_rng(1)
    t = rng.random(500) < 0.2
    t[:2] = True, False
    perfect = t.astype(float) + 0.5 * rng.random(500)  # distinct, positives all above negatives
    assert metrics.binary_average_precision(perfect, t) == pytest.approx(1.0)
    inverted = -perfect
    # every negative ranks first: AP = sum over positives of i / (n_neg + i), i = 1..n_pos
    n_pos, n_neg = t.sum(), (~t).sum()
    expected = np.mean([i / (n_neg + i) for i in range(1, n_pos + 1)])
    assert metrics.binary_average_precision(inverted, t) == pytest.approx(expected)
    # a constant prediction is one threshold: precision = prevalence
    assert metrics.binary_average_precision(np.zeros(500), t) == pytest.approx(t.mean())


def test_ap_without_positives_is_nan():
    assert np.isnan(metrics.binary_average_precision([0.2, 0.3], [0, 0]))


# ---------------------------------------------------------------------------------------------
# pooled IoU


@pytest.mark.parametrize("seed", range(6))
def test_best_iou_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    maps = rng.random((3, 9, 11)) ** rng.uniform(0.5, 3)
    masks = rng.random((3, 9, 11)) < rng.uniform(0.1, 0.7)
    assert metrics.pooled_best_iou(maps, masks) == pytest.approx(brute_best_iou(maps, masks), abs=1e-12)


def test_best_iou_perfect_inverted_and_empty_union():
    mask = np.zeros((2, 8, 8), bool)
    mask[:, 2:5, 3:7] = True
    assert metrics.pooled_best_iou(mask.astype(float), mask) == pytest.approx(1.0)
    inverted = 1.0 - mask.astype(float)
    # only thresholds below 0 would select the object, and the lowest is min = 0 (strict >)
    assert metrics.pooled_best_iou(inverted, mask) == pytest.approx(0.0)
    # no object and a flat map: every threshold predicts nothing -> union empty -> IoU 1
    assert metrics.pooled_best_iou(np.zeros((4, 4)), np.zeros((4, 4), bool)) == 1.0


def test_class_pooled_segmentation_pools_pixels_per_class():
    rng = np.random.default_rng(3)
    maps = rng.random((6, 10, 10)).astype(np.float32)
    masks = rng.random((6, 10, 10)) < 0.3
    classes = ["a", "b", "a", "c", "b", "a"]
    masks[3] = False  # class c has no object pixel: skipped, counted
    res = metrics.class_pooled_segmentation(maps, masks, classes)
    assert res.skipped_classes == ["c"] and res.n_classes == 2
    a = [0, 2, 5]
    assert res.per_class["a"]["ap"] == pytest.approx(brute_ap(maps[a], masks[a]))
    assert res.per_class["a"]["iou"] == pytest.approx(brute_best_iou(maps[a], masks[a]))
    b = [1, 4]
    assert res.mAP == pytest.approx((brute_ap(maps[a], masks[a]) + brute_ap(maps[b], masks[b])) / 2)
    perfect = metrics.class_pooled_segmentation(masks.astype(float), masks, classes)
    assert perfect.mAP == pytest.approx(1.0) and perfect.mIoU == pytest.approx(1.0)


def test_normalization_modes():
    maps = np.stack([np.full((2, 2), 3.0), np.array([[0.0, 1.0], [2.0, 4.0]])])
    g = metrics.normalize_heatmaps(maps, "global")
    assert g.min() == 0 and g.max() == 1 and g[0, 0, 0] == pytest.approx(0.75)
    p = metrics.normalize_heatmaps(maps, "per_image")
    assert np.all(p[0] == 0)  # constant map -> zeros, not NaN
    assert p[1].max() == 1 and p[1].min() == 0
    with pytest.raises(ValueError, match="normalization"):
        metrics.normalize_heatmaps(maps, "softmax")


# ---------------------------------------------------------------------------------------------
# IS3 extras


def test_sample_iou_median_and_adaptive():
    mask = np.zeros((10, 10), bool)
    mask[:3, :] = True  # 30 pixels
    heat = np.linspace(1, 0, 100).reshape(10, 10)  # object pixels are the highest
    # median: top half predicted (50 px, strictly above sorted[50]) -> 30 / 49 or so; brute force:
    thr = np.sort(heat.ravel())[50]
    p = heat > thr
    assert metrics.sample_iou(heat, mask, "median") == pytest.approx((p & mask).sum() / (p | mask).sum())
    thr = np.sort(heat.ravel())[100 - 30]
    p = heat > thr
    assert metrics.sample_iou(heat, mask, "adaptive") == pytest.approx((p & mask).sum() / (p | mask).sum())
    assert metrics.sample_iou(1 - heat, mask, "adaptive") == 0.0


def test_ciou_auc_iiou():
    ious = np.array([0.0, 0.5, 0.49, 1.0])
    assert metrics.ciou(ious) == 0.5
    # brute-force trapezoid over the 21 cut-offs
    shares = [np.mean(ious >= c) for c in np.arange(21) * 0.05]
    assert metrics.auc(ious) == pytest.approx(np.trapezoid(shares, np.arange(21) * 0.05))
    assert metrics.auc(np.ones(5)) == pytest.approx(1.0) and metrics.auc(np.zeros(5)) == pytest.approx(0.05 / 2)
    assert metrics.iiou([0.6, 0.7, 0.6, 0.2, 0.9], ["x", "x", "y", "y", "z"]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# retrieval


@pytest.mark.parametrize("seed", range(4))
def test_recall_matches_brute_force(seed):
    rng = np.random.default_rng(200 + seed)
    n = 40
    scores = rng.normal(size=(n, n)) + np.eye(n) * rng.uniform(0, 3)
    r = metrics.recall_at_k(scores, ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2a, a2i = brute_recall(scores, k)
        assert r["I->A"][k] == pytest.approx(i2a)
        assert r["A->I"][k] == pytest.approx(a2i)


def test_recall_directions_are_not_swapped():
    # audio 0 scores image 1 highest, but image 0 still prefers audio 0: I->A hit, A->I miss
    s = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = metrics.recall_at_k(s, ks=(1,))
    assert r["I->A"][1] == pytest.approx(2 / 3)  # image 1: audio 0 (2.0) beats audio 1 (1.0)
    assert r["A->I"][1] == pytest.approx(2 / 3)  # audio 0: image 1 beats image 0
    s2 = s.copy()
    s2[0, 1], s2[1, 0] = 0.0, 2.0  # now audio 1 prefers image 0 and image 0 prefers audio 1
    r2 = metrics.recall_at_k(s2, ks=(1,))
    assert r2["I->A"][1] == pytest.approx(2 / 3) and r2["A->I"][1] == pytest.approx(2 / 3)
    perfect = metrics.recall_at_k(np.eye(7), ks=(1, 5))
    assert perfect["I->A"][1] == 1.0 and perfect["A->I"][1] == 1.0
    inverted = metrics.recall_at_k(-np.eye(7) * 5, ks=(1, 6, 7))
    assert inverted["I->A"][1] == 0.0 and inverted["I->A"][6] == 0.0 and inverted["I->A"][7] == 1.0


def test_recall_ties_count_at_chance():
    n = 8
    r = metrics.recall_at_k(np.zeros((n, n)), ks=(1, 4, 8))
    assert r["I->A"] == {1: pytest.approx(1 / 8), 4: pytest.approx(4 / 8), 8: pytest.approx(1.0)}
    # image 0 ties its own audio with one other clip, above all the rest: a coin flip at k = 1
    s = np.eye(3)
    s[1, 0] = 1.0
    r = metrics.recall_at_k(s, ks=(1, 2))
    assert r["I->A"][1] == pytest.approx((0.5 + 1 + 1) / 3) and r["I->A"][2] == pytest.approx(1.0)


def test_recall_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        metrics.recall_at_k(np.zeros((3, 4)))


# ---------------------------------------------------------------------------------------------
# disentanglement


def brute_disentanglement(sp, so):
    allv = np.concatenate([sp, so])
    norm = (allv - allv.min(0)) / np.maximum(allv.max(0) - allv.min(0), 1e-4)
    is_sp = np.r_[np.ones(len(sp), bool), np.zeros(len(so), bool)]
    ap = [[brute_ap(norm[:, k], lab) for lab in (is_sp, ~is_sp)] for k in range(2)]
    act = [[1 - norm[lab, k].mean() for lab in (is_sp, ~is_sp)] for k in range(2)]
    pred = max((ap[0][0] + ap[1][1]) / 2, (ap[0][1] + ap[1][0]) / 2)
    actd = max((act[0][0] + act[1][1]) / 2, (act[0][1] + act[1][0]) / 2)
    return pred, actd


@pytest.mark.parametrize("seed", range(4))
def test_disentanglement_matches_brute_force(seed):
    rng = np.random.default_rng(300 + seed)
    sp = rng.normal(size=(30, 2)) + [0, 1]
    so = rng.normal(size=(25, 2)) + [1, 0]
    d = metrics.disentanglement(sp, so)
    pred, act = brute_disentanglement(sp, so)
    assert d["pred_dis"] == pytest.approx(pred) and d["act_dis"] == pytest.approx(act)


def test_disentanglement_perfect_heads():
    # head 0 fires only on sound, head 1 only on speech: perfect detection either assignment
    sp = np.column_stack([np.zeros(10), np.ones(10)])
    so = np.column_stack([np.ones(8), np.zeros(8)])
    d = metrics.disentanglement(sp, so)
    assert d["pred_dis"] == pytest.approx(1.0)
    assert d["act_dis"] == pytest.approx(1.0)  # each head is silent on the other type
    swapped = metrics.disentanglement(sp[:, ::-1], so[:, ::-1])
    assert swapped["pred_dis"] == pytest.approx(1.0)  # the max over assignments finds it


def test_disentanglement_win_share_counts_which_head_scores_higher():
    # speech pairs: head 1 higher on 3 of 4; sound pairs: head 0 higher on both
    sp = np.array([[0.1, 0.5], [0.2, 0.9], [0.7, 0.3], [0.0, 0.4]])
    so = np.array([[0.8, 0.1], [0.6, 0.5]])
    wins = metrics.disentanglement(sp, so)["win_share"]
    assert wins == [[0.25, 1.0], [0.75, 0.0]]
