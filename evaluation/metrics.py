"""Evaluation metrics, defined once (see docs/evaluation.md for the protocol each one follows).

Everything here works on numpy arrays and knows nothing about models or data sets:

- ``binary_average_precision``: exact, non-interpolated AP with the semantics of torchmetrics'
  ``binary_average_precision`` (ties grouped into one threshold, AP = sum over distinct thresholds
  of (R_n - R_{n-1}) * P_n).
- ``pooled_best_iou``: the best IoU over 20 thresholds ``linspace(min, max, 20)`` of the pooled
  values, a pixel positive when strictly above the threshold, an empty union counted as IoU 1.
- ``class_pooled_segmentation``: both of the above per prompt class over all pixels of all images of
  that class pooled together, then averaged over classes (mAP / mIoU of DenseAV's protocol).
- ``sample_iou`` / ``ciou`` / ``auc`` / ``iiou``: the IS3-family localization extras.
- ``recall_at_k``: retrieval R@k in both directions from an audio x image score matrix.
- ``disentanglement``: DenseAV's Pred.Dis and Act.Dis from per-head matched-pair scores.
- ``normalize_heatmaps``: global or per-image min-max normalization.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NORMALIZATIONS = ("global", "per_image")
N_IOU_THRESHOLDS = 20
IOU_HIT = 0.5  # an IoU at or above this counts as a localized sample (cIoU, IIoU)
AUC_CUTOFFS = np.round(np.arange(21) * 0.05, 10)  # 0, 0.05, ..., 1.0


# ---------------------------------------------------------------------------------------------
# pixel-level detection metrics


def binary_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Exact average precision of ``scores`` as a detector of ``targets`` (any shapes, pooled).

    Ties are one threshold, as in torchmetrics: the precision at a threshold counts every item
    scoring at least that value. Returns NaN when there is no positive target (recall undefined).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel().astype(bool)
    if s.shape != t.shape:
        raise ValueError(f"scores ({s.size}) and targets ({t.size}) differ in size")
    n_pos = int(t.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    tps = np.cumsum(t, dtype=np.float64)
    # the last index of each run of equal scores is where that threshold's counts are read
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = tps[last]
    predicted = (last + 1).astype(np.float64)
    precision = tps / predicted
    recall = tps / n_pos
    recall_gain = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_gain * precision))


def iou_thresholds(values: np.ndarray, n: int = N_IOU_THRESHOLDS) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return np.linspace(v.min(), v.max(), n)


def pooled_best_iou(scores: np.ndarray, targets: np.ndarray, n_thresholds: int = N_IOU_THRESHOLDS) -> float:
    """Best IoU of ``scores > thr`` against ``targets`` over ``linspace(min, max, n)`` thresholds.

    Counted from sorted values (O(N log N)) instead of materializing one mask per threshold.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel().astype(bool)
    if s.shape != t.shape:
        raise ValueError(f"scores ({s.size}) and targets ({t.size}) differ in size")
    if s.size == 0:
        return float("nan")
    thresholds = iou_thresholds(s, n_thresholds)
    all_sorted = np.sort(s)
    pos_sorted = np.sort(s[t])
    predicted = s.size - np.searchsorted(all_sorted, thresholds, side="right")
    inter = pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="right")
    union = predicted + pos_sorted.size - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(iou.max())


@dataclass
class SegmentationResult:
    """Per-class pooled AP / IoU and their means over the classes that have a positive pixel."""

    mAP: float
    mIoU: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    n_classes: int = 0
    skipped_classes: list[str] = field(default_factory=list)  # no positive pixel: AP undefined

    def as_dict(self) -> dict:
        return {
            "mAP": self.mAP,
            "mIoU": self.mIoU,
            "n_classes": self.n_classes,
            "skipped_classes": self.skipped_classes,
            "per_class": self.per_class,
        }


def class_pooled_segmentation(heatmaps: np.ndarray, masks: np.ndarray, classes) -> SegmentationResult:
    """DenseAV's mAP / mIoU: for each class, AP and best IoU over its images' pixels pooled.

    ``heatmaps`` [N, H, W] (already normalized and upsampled), ``masks`` [N, H, W] bool, ``classes``
    N labels. A class whose masks are all empty has no defined AP; it is left out of both means
    and listed in ``skipped_classes`` (so nothing is dropped silently).
    """
    heatmaps = np.asarray(heatmaps)
    masks = np.asarray(masks).astype(bool)
    if heatmaps.shape != masks.shape or heatmaps.shape[0] != len(classes):
        raise ValueError(f"heatmaps {heatmaps.shape}, masks {masks.shape} and {len(classes)} class labels must agree")
    return pooled_segmentation_by_class(classes, lambda idx: (heatmaps[idx], masks[idx]))


def pooled_segmentation_by_class(classes, fetch) -> SegmentationResult:
    """``class_pooled_segmentation`` with the items of one class fetched at a time:
    ``fetch(indices) -> (heatmaps, masks)``, so a large set never sits upsampled in memory."""
    classes = np.asarray([str(c) for c in classes])
    per_class: dict[str, dict[str, float]] = {}
    skipped = []
    for c in sorted(set(classes.tolist())):
        idx = np.flatnonzero(classes == c)
        s, t = fetch(idx)
        t = np.asarray(t).astype(bool)
        if not t.any():
            skipped.append(c)
            continue
        per_class[c] = {"ap": binary_average_precision(s, t), "iou": pooled_best_iou(s, t), "n_images": int(idx.size)}
    aps = [v["ap"] for v in per_class.values()]
    ious = [v["iou"] for v in per_class.values()]
    return SegmentationResult(
        mAP=float(np.mean(aps)) if aps else float("nan"),
        mIoU=float(np.mean(ious)) if ious else float("nan"),
        per_class=per_class,
        n_classes=len(per_class),
        skipped_classes=skipped,
    )


# ---------------------------------------------------------------------------------------------
# heatmap normalization


def normalize_heatmaps(maps: np.ndarray, mode: str) -> np.ndarray:
    """Min-max normalize [N, ...] maps: one min/max over the whole set, or one per map.

    A constant map (max == min) becomes all zeros instead of NaN.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    m = np.asarray(maps, dtype=np.float32)
    if m.size == 0:
        return m.copy()
    if mode == "global":
        lo, hi = float(m.min()), float(m.max())
        return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    flat = m.reshape(m.shape[0], -1)
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    out = np.where(span > 0, (flat - lo) / np.where(span > 0, span, 1), 0.0)
    return out.reshape(m.shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# IS3-family per-sample localization


THRESHOLD_MODES = ("median", "adaptive")


def sample_iou(heatmap: np.ndarray, mask: np.ndarray, mode: str = "median") -> float:
    """IoU of one (per-image normalized) heatmap against its mask.

    ``median``: positive where the value is above the median pixel (``sorted[N // 2]``).
    ``adaptive``: threshold at ``sorted[N - k]`` with k the mask's pixel count (N // 2 for an
    empty mask), so the predicted area follows the object's. Positive means strictly above the
    threshold. An empty union counts as IoU 1.
    """
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    h = np.asarray(heatmap, dtype=np.float64).ravel()
    g = np.asarray(mask).ravel().astype(bool)
    if h.shape != g.shape:
        raise ValueError(f"heatmap ({h.size}) and mask ({g.size}) differ in size")
    ordered = np.sort(h)
    n = h.size
    if mode == "median":
        thr = ordered[n // 2]
    else:
        k = int(g.sum()) or n // 2
        thr = ordered[min(n - 1, n - k)]
    pred = h > thr
    inter = int(np.count_nonzero(pred & g))
    union = int(np.count_nonzero(pred | g))
    return 1.0 if union == 0 else inter / union


def ciou(ious) -> float:
    """Share of samples whose IoU reaches 0.5."""
    ious = np.asarray(ious, dtype=np.float64)
    return float(np.mean(ious >= IOU_HIT)) if ious.size else float("nan")


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def auc(ious) -> float:
    """Area under (cut-off, share of samples with IoU >= cut-off) for cut-offs 0, 0.05, ..., 1."""
    ious = np.asarray(ious, dtype=np.float64)
    if not ious.size:
        return float("nan")
    shares = np.array([np.mean(ious >= c) for c in AUC_CUTOFFS])
    return _trapezoid(AUC_CUTOFFS, shares)


def iiou(ious, groups) -> float:
    """Share of groups (images) in which every member (object) reaches IoU 0.5."""
    ious = np.asarray(ious, dtype=np.float64)
    groups = [str(g) for g in groups]
    if ious.shape[0] != len(groups):
        raise ValueError(f"{ious.shape[0]} IoUs but {len(groups)} group labels")
    if not groups:
        return float("nan")
    hit: dict[str, bool] = {}
    for value, g in zip(ious, groups):
        hit[g] = hit.get(g, True) and bool(value >= IOU_HIT)
    return float(np.mean(list(hit.values())))


# ---------------------------------------------------------------------------------------------
# retrieval


def recall_at_k(scores: np.ndarray, ks=(1, 5, 10)) -> dict[str, dict[int, float]]:
    """R@k in both directions from ``scores[audio, image]`` with the pairs on the diagonal.

    ``I->A``: share of images whose paired audio is among the k highest-scoring audio clips for
    that image; ``A->I`` the converse. Ties are broken at random *in expectation*: with g items
    scoring strictly higher and t others tying with the true item, the hit counts
    ``clip(k - g, 0, t + 1) / (t + 1)``. (Real-valued scores rarely tie; a constant score matrix
    gets chance level k / N instead of a perfect or a zero score.)
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"the score matrix must be square (paired audio and images), got {s.shape}")
    diag = np.diag(s)
    # per image (column): audio clips scoring above / tying with its own clip; converse per row
    above_i2a = (s > diag[None, :]).sum(axis=0)
    ties_i2a = (s == diag[None, :]).sum(axis=0) - 1
    above_a2i = (s > diag[:, None]).sum(axis=1)
    ties_a2i = (s == diag[:, None]).sum(axis=1) - 1

    def hit(k, above, ties):
        return float(np.mean(np.clip(k - above, 0, ties + 1) / (ties + 1)))

    return {
        "I->A": {int(k): hit(k, above_i2a, ties_i2a) for k in ks},
        "A->I": {int(k): hit(k, above_a2i, ties_a2i) for k in ks},
    }


# ---------------------------------------------------------------------------------------------
# disentanglement (DenseAV, two heads; one pair of heads and audio types of a K-head model)


def disentanglement(speech_scores: np.ndarray, sound_scores: np.ndarray) -> dict:
    """Pred.Dis and Act.Dis from matched-pair scores per head.

    ``speech_scores`` [Ns, 2] and ``sound_scores`` [Na, 2]: each head's score for every matched
    pair of the speech and the sound set. (Any pair of audio types t, u of a K-head model is scored
    the same way: t's set in place of speech, u's in place of sound, the columns heads h(t), h(u);
    ``evaluation.retrieval.table6_pair``.) Each head's scores are min-max normalized over both sets
    together; AP[k, d] is the AP of head k's score as a detector of audio type d
    (d = 0 speech, 1 sound); Act[k, d] = 1 - mean of head k's normalized score over type d.
    Pred.Dis (Act.Dis) is the better of the two head-to-type assignments of the mean AP (Act).
    ``win_share[k, d]``: the share of type d's pairs on which head k's raw score is the higher.
    """
    sp = np.asarray(speech_scores, dtype=np.float64)
    so = np.asarray(sound_scores, dtype=np.float64)
    if sp.ndim != 2 or so.ndim != 2 or sp.shape[1] != 2 or so.shape[1] != 2:
        raise ValueError(f"need [N, 2] per-head scores, got {sp.shape} and {so.shape}")
    if not len(sp) or not len(so):
        raise ValueError("disentanglement needs at least one speech and one sound pair")
    all_scores = np.concatenate([sp, so], axis=0)
    lo = all_scores.min(axis=0, keepdims=True)
    span = np.maximum(all_scores.max(axis=0, keepdims=True) - lo, 1e-4)
    norm = (all_scores - lo) / span
    is_speech = np.r_[np.ones(len(sp), bool), np.zeros(len(so), bool)]
    ap = np.zeros((2, 2))
    act = np.zeros((2, 2))
    for k in range(2):
        for d, labels in enumerate((is_speech, ~is_speech)):
            ap[k, d] = binary_average_precision(norm[:, k], labels)
            act[k, d] = 1.0 - norm[labels, k].mean()
    # which head L_cor's max over heads (Eq. 3) would route each matched pair to: raw scores,
    # since the max compares them unnormalized (a diagnostic, not one of DenseAV's metrics)
    wins = np.array([[np.mean(scores[:, k] > scores[:, 1 - k]) for scores in (sp, so)] for k in range(2)])
    return {
        "pred_dis": float(max((ap[0, 0] + ap[1, 1]) / 2, (ap[0, 1] + ap[1, 0]) / 2)),
        "act_dis": float(max((act[0, 0] + act[1, 1]) / 2, (act[0, 1] + act[1, 0]) / 2)),
        "ap_matrix": ap.tolist(),  # rows: heads, columns: (speech, sound)
        "act_matrix": act.tolist(),
        "win_share": wins.tolist(),  # rows: heads, columns: (speech, sound): share of pairs it scores higher
    }
