import itertools

import pytest
import torch

from model.similarity import (
    batch_scores,
    frame_heatmaps,
    head_scores,
    heatmaps,
    max_over_heads,
    naive_batch_scores,
    pair_volume,
    total_scores,
    word_window,
)


def _features(ba=4, bv=3, c=5, k=2, f=2, t=6, h=3, w=4, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(ba, c, k, f, t, generator=gen, dtype=dtype)
    v = torch.randn(bv, c, k, h, w, generator=gen, dtype=dtype)
    lengths = torch.randint(1, t + 1, (ba,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return a, mask, v


def _loop_scores(a, mask, v, head):
    """Eqs. 2-6 written out element by element."""
    ba, c, k, f, t = a.shape
    bv, _, _, h, w = v.shape
    out = torch.zeros(ba, bv, dtype=torch.float64)
    heads = range(k) if head is None else [head]
    for i, j in itertools.product(range(ba), range(bv)):
        total, count = 0.0, 0
        for ff, tt in itertools.product(range(f), range(t)):
            if not mask[i, tt]:
                continue
            best = max(
                float(sum(a[i, cc, kk, ff, tt] * v[j, cc, kk, hh, ww] for cc in range(c)))
                for kk in heads
                for hh in range(h)
                for ww in range(w)
            )
            total += best
            count += 1
        out[i, j] = total / count if count else 0.0
    return out


@pytest.mark.parametrize("head", [None, 0, 1])
def test_scores_match_the_equations_element_by_element(head):
    a, mask, v = _features(ba=3, bv=2, c=3, f=2, t=4, h=2, w=3)
    expected = _loop_scores(a, mask, v, head)
    torch.testing.assert_close(naive_batch_scores(a, mask, v, head), expected)
    torch.testing.assert_close(batch_scores(a, mask, v, head), expected)


def test_eq5_and_eq6_entry_points():
    """total_scores is s_M (Eq. 5, heads max-pooled by Eq. 3), head_scores is s_N (Eq. 6)."""
    a, mask, v = _features(ba=3, bv=2, c=3, f=2, t=4, h=2, w=3, seed=4)
    torch.testing.assert_close(total_scores(a, mask, v), _loop_scores(a, mask, v, None))
    for head in (0, 1):
        torch.testing.assert_close(head_scores(a, mask, v, head), _loop_scores(a, mask, v, head))
    with pytest.raises(ValueError, match="head index"):
        head_scores(a, mask, v, None)
    volume = pair_volume(a[:2], v)
    best = max_over_heads(volume, 1)
    torch.testing.assert_close(best.values, torch.maximum(volume[:, 0], volume[:, 1]))
    assert torch.equal(best.indices, (volume[:, 1] > volume[:, 0]).long())


@pytest.mark.parametrize("head", [None, 0, 1])
@pytest.mark.parametrize("chunk", [None, 1, 3000])
def test_blocked_scores_equal_naive_in_value_and_gradient(head, chunk):
    a, mask, v = _features(ba=5, bv=4, c=6, f=2, t=7, h=3, w=4, seed=1)
    upstream = torch.randn(5, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = []
    for fn in (naive_batch_scores, lambda *x: batch_scores(*x, chunk=chunk)):
        aa, vv = a.clone().requires_grad_(), v.clone().requires_grad_()
        scores = fn(aa, mask, vv, head)
        (scores * upstream).sum().backward()
        grads.append((scores.detach(), aa.grad, vv.grad))
    for ours, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_blocked_gradient_passes_gradcheck():
    a, mask, v = _features(ba=3, bv=3, c=4, f=1, t=5, h=2, w=2, seed=2)
    a.requires_grad_()
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: batch_scores(x, mask, y, chunk=100), (a, v))


def test_no_grad_path_gives_the_same_scores():
    a, mask, v = _features(seed=3)
    with torch.no_grad():
        plain = batch_scores(a, mask, v)
    tracked = batch_scores(a.clone().requires_grad_(), mask, v)
    torch.testing.assert_close(plain, tracked.detach())


def test_padded_frames_change_no_score_and_get_no_gradient():
    a, mask, v = _features(seed=4)
    mask[0, 3:] = False
    noisy = torch.where(mask[:, None, None, None, :], a, 1e3 * torch.randn_like(a))
    torch.testing.assert_close(batch_scores(noisy, mask, v), batch_scores(a, mask, v))
    leaf = noisy.clone().requires_grad_()
    batch_scores(leaf, mask, v).sum().backward()
    assert leaf.grad[~mask[:, None, None, None, :].expand_as(a)].abs().max() == 0


def test_clip_without_valid_frames_scores_zero():
    a, mask, v = _features(seed=5)
    mask[1] = False
    assert torch.all(batch_scores(a, mask, v)[1] == 0)


def test_single_head_score_uses_only_its_head():
    a, mask, v = _features(seed=6)
    other_a, other_v = a.clone(), v.clone()
    other_a[:, :, 1] = torch.randn_like(other_a[:, :, 1])
    other_v[:, :, 1] = torch.randn_like(other_v[:, :, 1])
    torch.testing.assert_close(batch_scores(other_a, mask, other_v, head=0), batch_scores(a, mask, v, head=0))
    leaf_a, leaf_v = a.clone().requires_grad_(), v.clone().requires_grad_()
    batch_scores(leaf_a, mask, leaf_v, head=0).sum().backward()
    assert leaf_a.grad[:, :, 1].abs().max() == 0 and leaf_v.grad[:, :, 1].abs().max() == 0
    assert leaf_a.grad[:, :, 0].abs().max() > 0


def test_max_over_heads_bounds_each_head():
    a, mask, v = _features(seed=7)
    total = batch_scores(a, mask, v)
    for head in (0, 1):
        assert torch.all(total >= batch_scores(a, mask, v, head=head) - 1e-12)


def test_autocast_bfloat16_runs_and_stays_close():
    a, mask, v = _features(ba=6, bv=5, c=16, t=9, seed=8, dtype=torch.float32)
    reference = naive_batch_scores(a.double(), mask, v.double())
    leaf_a, leaf_v = a.clone().requires_grad_(), v.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = batch_scores(leaf_a, mask, leaf_v)
    assert scores.dtype == torch.float32
    scale = reference.abs().max()
    assert (scores.double() - reference).abs().max() < 0.02 * scale
    scores.sum().backward()
    assert leaf_a.grad.dtype == torch.float32 and torch.isfinite(leaf_v.grad).all()


def test_bad_inputs_raise_clear_errors():
    a, mask, v = _features()
    with pytest.raises(ValueError, match="frame_mask"):
        batch_scores(a, mask.float(), v)
    with pytest.raises(ValueError, match="head"):
        batch_scores(a, mask, v, head=2)
    with pytest.raises(ValueError, match="differ"):
        batch_scores(a, mask, v[:, :3])
    with pytest.raises(ValueError, match=r"\[B, C, K, F, T\]"):
        batch_scores(a[..., 0], mask, v)


# ------------------------------------------------------------------------------------------ heatmaps


def test_pair_volume_is_eq2_for_matched_pairs_with_padding_zeroed():
    a, mask, v = _features(ba=3, bv=3, seed=9)
    volume = pair_volume(a, v, mask)
    i, k, f, t, h, w = 2, 1, 1, 0, 2, 3
    expected = (a[i, :, k, f, t] * v[i, :, k, h, w]).sum() * mask[i, t]
    torch.testing.assert_close(volume[i, k, f, t, h, w], expected)
    assert torch.all(volume[~mask[:, None, None, :, None, None].expand_as(volume)] == 0)


def test_heatmaps_average_head_max_over_valid_frames():
    a, mask, v = _features(ba=3, bv=3, seed=10)
    volume = torch.einsum("bckft,bckhw->bkfthw", a, v).mean(2)  # [B, K, T, h, w]
    total = volume.max(1).values
    weight = mask.double() / mask.sum(1, keepdim=True)
    expected = torch.einsum("bthw,bt->bhw", total, weight)
    torch.testing.assert_close(heatmaps(a, mask, v, head="max"), expected)
    torch.testing.assert_close(heatmaps(a, mask, v, head=1), torch.einsum("bthw,bt->bhw", volume[:, 1], weight))
    assert heatmaps(a, mask, v, head="all").shape == (3, 2, 3, 4)
    assert frame_heatmaps(a, v, head=0).shape == (3, 6, 3, 4)


def test_heatmaps_with_a_frame_window_use_only_those_frames():
    a, mask, v = _features(ba=2, bv=2, seed=11)
    mask[:] = True
    window = torch.zeros_like(mask)
    window[:, 2] = True
    expected = frame_heatmaps(a, v, head=0)[:, 2]
    torch.testing.assert_close(heatmaps(a, mask, v, head=0, frame_weights=window), expected)
    with pytest.raises(ValueError, match="no valid frame"):
        heatmaps(a, mask, v, frame_weights=torch.zeros_like(mask))
    with pytest.raises(ValueError, match="matched pairs"):
        heatmaps(a, mask, v[:1])


def test_word_window_widens_and_rounds_outwards():
    # 10 s clip, 55 frames: [1.0 - 0.2, 1.5 + 0.2] s -> frames [floor(4.4), ceil(9.35)) = 4..9
    window = word_window(torch.tensor([1.0]), torch.tensor([1.5]), 10.0, 55)
    assert window.shape == (1, 55)
    assert window[0].nonzero().flatten().tolist() == list(range(4, 10))
