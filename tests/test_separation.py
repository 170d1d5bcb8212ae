"""Taking apart two body parts predicted at one spot (element_pose.engine.separation)."""

import numpy as np
import pytest
import torch

from element_pose.engine.separation import separate_parts, separation_radii

NAN = float("nan")


def test_radii_come_from_the_closest_labeled_distance():
    rng = np.random.default_rng(0)
    n = 40
    left = rng.uniform(50, 100, (n, 2))
    kp = np.stack([left, left + [30.0, 0.0], left + [2.0, 0.0]], axis=1)  # pairs 30 and 2 apart
    kp[0, 1] = kp[0, 0] + [12.0, 0.0]  # the closest the pair ever came
    kp[5:, 2] = np.nan  # part 2 labeled with the others in only 5 frames
    r = separation_radii(kp, fraction=0.5, percentile=0.0, min_frames=10)
    assert r.shape == (3, 3) and np.allclose(r, r.T)
    assert r[0, 1] == pytest.approx(6.0)  # half of the closest distance, 12 px
    assert r[0, 2] == 0 and r[1, 2] == 0  # too few frames label them together
    assert (np.diag(r) == 0).all()
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        separation_radii(kp[..., 0])


def test_twin_on_its_sibling_moves_to_its_next_peak():
    radii = torch.tensor([[0.0, 20.0, 0.0], [20.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # part 1 (a left paw) sits on part 0 (the right paw); its second peak is where it belongs
    pose = torch.tensor([[[10.0, 10.0, 0.9], [12.0, 10.0, 0.6], [11.0, 11.0, 0.8]]])
    peaks = torch.full((1, 3, 4, 3), NAN)
    peaks[0, :, 0] = pose[0]
    peaks[0, 0, 1] = torch.tensor([200.0, 10.0, 0.1])  # part 0's alternative is weak
    peaks[0, 1, 1] = torch.tensor([60.0, 10.0, 0.5])
    out = separate_parts(pose, peaks, radii)
    assert out[0, 1].tolist() == pytest.approx([60.0, 10.0, 0.5])  # moved, with its confidence
    assert torch.equal(out[0, 0], pose[0, 0]) and torch.equal(out[0, 2], pose[0, 2])
    # the pair has no constraint from part 2 (radius 0): part 2 on top of part 0 stays


def test_conflict_without_a_free_peak_is_left_alone():
    radii = torch.tensor([[0.0, 20.0], [20.0, 0.0]])
    pose = torch.tensor([[[10.0, 10.0, 0.9], [12.0, 10.0, 0.6]], [[0.0, 0.0, 0.9],
                                                                   [100.0, 0.0, 0.9]]])
    peaks = torch.full((2, 2, 4, 3), NAN)
    peaks[:, :, 0] = pose
    peaks[0, 1, 1] = torch.tensor([15.0, 10.0, 0.5])  # still inside part 0's radius
    peaks[0, 0, 1] = torch.tensor([300.0, 10.0, 0.01])  # below the confidence an alternative needs
    out = separate_parts(pose, peaks, radii)
    assert torch.equal(out, pose)  # frame 0 unresolved, frame 1 has no conflict


def test_part_that_loses_less_confidence_moves():
    radii = torch.tensor([[0.0, 20.0], [20.0, 0.0]])
    pose = torch.tensor([[[10.0, 10.0, 0.7], [12.0, 10.0, 0.9]]])
    peaks = torch.full((1, 2, 4, 3), NAN)
    peaks[0, :, 0] = pose[0]
    peaks[0, 0, 1] = torch.tensor([80.0, 10.0, 0.65])  # loses 0.05
    peaks[0, 1, 1] = torch.tensor([-50.0, 10.0, 0.3])  # would lose 0.6
    out = separate_parts(pose, peaks, radii)
    assert out[0, 0].tolist() == pytest.approx([80.0, 10.0, 0.65])
    assert torch.equal(out[0, 1], pose[0, 1])


def test_confident_part_stays_for_a_partner_with_no_peak_of_its_own():
    radii = torch.tensor([[0.0, 20.0], [20.0, 0.0]])
    # part 1 barely fires (0.1) on part 0's spot; part 0's next peak (0.3) would cost 0.6
    pose = torch.tensor([[[10.0, 10.0, 0.9], [12.0, 10.0, 0.1]]])
    peaks = torch.full((1, 2, 4, 3), NAN)
    peaks[0, :, 0] = pose[0]
    peaks[0, 0, 1] = torch.tensor([80.0, 10.0, 0.3])
    assert torch.equal(separate_parts(pose, peaks, radii), pose)  # 0.1 + 0.3 < 0.9


def test_part_does_not_move_to_a_flicker_because_its_twin_is_a_little_stronger():
    radii = torch.tensor([[0.0, 20.0], [20.0, 0.0]])
    pose = torch.tensor([[[10.0, 10.0, 0.85], [14.0, 10.0, 0.8]]])
    peaks = torch.full((1, 2, 4, 3), NAN)
    peaks[0, :, 0] = pose[0]
    peaks[0, 1, 1] = torch.tensor([90.0, 10.0, 0.1])  # under half of the 0.8 it would replace
    peaks[0, 0, 1] = torch.tensor([-90.0, 10.0, 0.2])
    assert torch.equal(separate_parts(pose, peaks, radii), pose)
    peaks[0, 1, 1, 2] = 0.45  # a real second peak: the weaker twin moves
    assert separate_parts(pose, peaks, radii)[0, 1].tolist() == pytest.approx([90.0, 10.0, 0.45])
