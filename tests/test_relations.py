"""Fixed geometry between body parts, learned and kept (element_pose.engine.relations)."""

import numpy as np
import pytest
import torch

from element_pose.engine.relations import broken_relations, keep_relations, learn_relations

NAN = float("nan")


def mirrored_labels(n: int = 60, seed: int = 0) -> np.ndarray:
    """A paw seen directly (part 0) and in a mirror (part 1, same x +- 3 px, 150 px lower),
    and a nose (part 2) that wanders freely."""
    rng = np.random.default_rng(seed)
    paw = rng.uniform([50, 20], [350, 120], (n, 2))
    mirror = np.stack([paw[:, 0] + rng.uniform(-3, 3, n), 300 - paw[:, 1]], axis=1)
    nose = rng.uniform([0, 0], [400, 400], (n, 2))
    return np.stack([paw, mirror, nose], axis=1)


def test_learns_only_the_differences_the_labels_fix():
    kp = mirrored_labels()
    rel = learn_relations(kp, animal_size=300.0)
    # paw and mirror: fixed in x; their y difference bounded (what the labels span)
    assert [tuple(int(v) for v in r[:3]) + (r[5],) for r in rel] == [(0, 1, 0, 1.0),
                                                                       (0, 1, 1, 0.0)]
    lo, hi = rel[0, 3:5]
    d = kp[:, 1, 0] - kp[:, 0, 0]
    assert lo < d.min() and hi > d.max()  # every label keeps it, with a margin
    assert hi - lo < 0.1 * 300.0  # still far tighter than the animal
    lo, hi = rel[1, 3:5]
    d = kp[:, 1, 1] - kp[:, 0, 1]
    assert lo < d.min() and hi > d.max()  # every label within the bound
    # too few frames labeled together: nothing learned
    assert len(learn_relations(kp[:10], animal_size=300.0)) == 0
    # a part missing in most frames (NaN) counts only where labeled
    kp_missing = kp.copy()
    kp_missing[5:, 1] = np.nan
    assert len(learn_relations(kp_missing, animal_size=300.0)) == 0
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        learn_relations(kp[..., 0], animal_size=300.0)
    assert learn_relations(kp, animal_size=0.0).shape == (0, 6)


def test_part_off_its_mirror_moves_to_the_peak_that_keeps_the_relation():
    rel = torch.tensor([[0.0, 1.0, 0.0, -10.0, 10.0]])
    # part 0 (top paw) on another paw 100 px away; its mirror image (part 1) is right
    pose = torch.tensor([[[200.0, 50.0, 0.8], [100.0, 250.0, 0.9], [5.0, 5.0, 0.9]],
                         [[100.0, 50.0, 0.8], [102.0, 250.0, 0.9], [5.0, 5.0, 0.9]]])
    peaks = torch.full((2, 3, 8, 3), NAN)
    peaks[:, :, 0] = pose
    peaks[0, 0, 1] = torch.tensor([300.0, 50.0, 0.6])  # also off
    peaks[0, 0, 2] = torch.tensor([103.0, 60.0, 0.3])  # the right place, weaker
    peaks[0, 1, 1] = torch.tensor([190.0, 250.0, 0.1])  # the mirror's own alternative: weak
    assert broken_relations(pose, rel).tolist() == [[True], [False]]
    out = keep_relations(pose, peaks, rel)
    assert out[0, 0].tolist() == pytest.approx([103.0, 60.0, 0.3])
    assert torch.equal(out[0, 1:], pose[0, 1:])
    assert torch.equal(out[1], pose[1])  # frame 1 keeps every relation: untouched
    assert not broken_relations(out, rel).any()


def test_a_confident_part_does_not_move_for_a_weak_accuser():
    rel = torch.tensor([[0.0, 1.0, 0.0, -10.0, 10.0]])
    # part 0 found with 0.95 (right), part 1 a 0.06 flicker far off with no other peak
    pose = torch.tensor([[[100.0, 50.0, 0.95], [300.0, 250.0, 0.06]],
                         [[100.0, 50.0, 0.9], [300.0, 250.0, 0.1]]])
    peaks = torch.full((2, 2, 8, 3), NAN)
    peaks[:, :, 0] = pose
    peaks[0, 0, 1] = torch.tensor([295.0, 40.0, 0.055])  # would keep it: too weak to count
    # frame 1: both could move; the weak part moving leaves more summed confidence
    peaks[1, 0, 1] = torch.tensor([295.0, 40.0, 0.85])
    peaks[1, 1, 1] = torch.tensor([104.0, 250.0, 0.09])
    out = keep_relations(pose, peaks, rel)
    assert torch.equal(out[0], pose[0])
    assert out[1, 1].tolist() == pytest.approx([104.0, 250.0, 0.09])
    assert torch.equal(out[1, 0], pose[1, 0])


def test_nothing_moves_without_a_peak_that_keeps_the_relation_or_a_confident_partner():
    rel = torch.tensor([[0.0, 1.0, 0.0, -10.0, 10.0]])
    pose = torch.tensor([[[200.0, 50.0, 0.8], [100.0, 250.0, 0.9]],
                         [[200.0, 50.0, 0.8], [100.0, 250.0, 0.01]]])  # mirror not found
    peaks = torch.full((2, 2, 8, 3), NAN)
    peaks[:, :, 0] = pose
    peaks[0, 0, 1] = torch.tensor([100.0, 60.0, 0.015])  # keeps it, but below any confidence
    peaks[1, 0, 1] = torch.tensor([100.0, 60.0, 0.5])
    out = keep_relations(pose, peaks, rel)
    assert torch.equal(out, pose)
    assert torch.equal(keep_relations(pose, peaks, torch.zeros((0, 5))), pose)


def test_the_part_breaking_most_relations_moves():
    # part 2 is tied to parts 0 and 1 (same x); part 2 is off, parts 0 and 1 agree
    rel = torch.tensor([[0.0, 2.0, 0.0, -5.0, 5.0], [1.0, 2.0, 0.0, -5.0, 5.0]])
    pose = torch.tensor([[[50.0, 0.0, 0.9], [51.0, 100.0, 0.9], [150.0, 200.0, 0.9]]])
    peaks = torch.full((1, 3, 8, 3), NAN)
    peaks[0, :, 0] = pose[0]
    peaks[0, 0, 1] = torch.tensor([150.0, 0.0, 0.8])  # would fix one relation of part 0 only
    peaks[0, 2, 1] = torch.tensor([49.0, 200.0, 0.4])
    out = keep_relations(pose, peaks, rel)
    assert out[0, 2].tolist() == pytest.approx([49.0, 200.0, 0.4])
    assert torch.equal(out[0, :2], pose[0, :2])


def _mend_one_frame(pose: torch.Tensor, peaks: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """The rule of keep_relations written plainly, one frame and one candidate at a time."""
    from element_pose.engine.relations import RELATION_MIN_PEAK

    pose = pose.clone()
    k = pose.shape[0]
    fixed = rel[rel[:, 5] > 0.5]  # relations start moves; bounds only judge the new place
    moved: set[int] = set()
    for _ in range(k):
        broken = broken_relations(pose[None], fixed)[0]
        if not broken.any():
            break
        moves = []
        for part in range(k):
            mine = (rel[:, 0] == part) | (rel[:, 1] == part)
            accusers = [int(fixed[r, 1] if fixed[r, 0] == part else fixed[r, 0])
                        for r in range(len(fixed)) if broken[r] and part in fixed[r, :2]]
            if not accusers or part in moved:
                continue
            support = max(float(pose[j, 2]) for j in accusers)
            for row in peaks[part, 1:]:
                if not torch.isfinite(row).all() or float(row[2]) < RELATION_MIN_PEAK:
                    break
                trial = pose.clone()
                trial[part] = row
                trial[part, 2] = 1.0  # judged whatever its own confidence
                if not broken_relations(trial[None], rel[mine])[0].any():
                    if support + float(row[2]) > max(float(pose[part, 2]), support):
                        moves.append((len(accusers), support + float(row[2]), part, row))
                    break
        if not moves:
            break
        _, _, part, row = max(moves, key=lambda mv: (mv[0], mv[1]))
        pose[part] = row
        moved.add(part)
    return pose


def test_all_frames_at_once_choose_as_one_frame_at_a_time():
    gen = torch.Generator().manual_seed(0)
    n, k, m = 300, 6, 8
    rel = torch.tensor([[0.0, 1.0, 0.0, -20.0, 20.0, 1.0], [0.0, 1.0, 1.0, -60.0, 60.0, 0.0],
                        [0.0, 3.0, 1.0, -30.0, 30.0, 1.0], [1.0, 3.0, 0.0, -25.0, 25.0, 1.0],
                        [2.0, 4.0, 0.0, -15.0, 15.0, 1.0], [2.0, 4.0, 1.0, 40.0, 80.0, 1.0],
                        [1.0, 5.0, 1.0, -10.0, 10.0, 1.0], [1.0, 5.0, 0.0, -90.0, 50.0, 0.0]])
    # peaks on a coarse grid, so that some keep relations and some break them
    xy = torch.randint(0, 8, (n, k, m, 2), generator=gen).float() * 20.0
    conf = torch.rand(n, k, m, generator=gen).sort(dim=-1, descending=True).values
    peaks = torch.cat([xy, conf[..., None]], dim=-1)
    # fewer peaks for some parts: NaN rows last, as find_peaks gives them
    count = torch.randint(2, m + 1, (n, k, 1), generator=gen)
    peaks[torch.arange(m) >= count] = NAN
    peaks[:, :, 0] = torch.cat([xy[:, :, 0], conf[:, :, 0, None]], dim=-1)
    pose = peaks[:, :, 0].clone()
    out = keep_relations(pose, peaks, rel)
    expected = torch.stack([_mend_one_frame(pose[i], peaks[i], rel) for i in range(n)])
    moved = (out != pose).any(-1).any(-1)
    assert 30 < int(moved.sum()) < n  # the case is not trivial
    assert torch.equal(out, expected)


def test_a_faint_peak_must_keep_the_relations_too():
    rel = torch.tensor([[0.0, 1.0, 0.0, -10.0, 10.0]])
    # part 0 off by 100 px; its only other peak is faint and off as well (same x as nothing)
    pose = torch.tensor([[[200.0, 50.0, 0.8], [100.0, 250.0, 0.9]],
                         [[200.0, 50.0, 0.8], [100.0, 250.0, 0.9]]])
    peaks = torch.full((2, 2, 8, 3), NAN)
    peaks[:, :, 0] = pose
    peaks[0, 0, 1] = torch.tensor([400.0, 250.0, 0.03])  # faint and breaking: no excuse
    peaks[1, 0, 1] = torch.tensor([104.0, 50.0, 0.03])  # faint and keeping it: taken
    out = keep_relations(pose, peaks, rel)
    assert torch.equal(out[0], pose[0])
    assert out[1, 0].tolist() == pytest.approx([104.0, 50.0, 0.03])


def test_a_peak_outside_a_bound_is_not_taken():
    # x fixed between a paw and its mirror image, y bounded: the mirror is 150-250 px below
    rel = torch.tensor([[0.0, 1.0, 0.0, -10.0, 10.0, 1.0], [0.0, 1.0, 1.0, 150.0, 250.0, 0.0]])
    pose = torch.tensor([[[200.0, 50.0, 0.8], [100.0, 250.0, 0.9]]])
    peaks = torch.full((1, 2, 8, 3), NAN)
    peaks[:, :, 0] = pose
    peaks[0, 0, 1] = torch.tensor([101.0, 245.0, 0.5])  # the mirror image's own spot: x fits
    peaks[0, 0, 2] = torch.tensor([99.0, 60.0, 0.3])  # the right place
    out = keep_relations(pose, peaks, rel)
    assert out[0, 0].tolist() == pytest.approx([99.0, 60.0, 0.3])
    # a bound alone never starts a move
    still = pose.clone()
    still[0, 0, :2] = torch.tensor([100.0, 240.0])
    assert torch.equal(keep_relations(still, peaks, rel), still)
