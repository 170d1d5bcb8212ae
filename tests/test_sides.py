"""Left/right parts kept on their side of the body axis (engine.sides)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from element_pose.engine.config import ConfigError, EngineConfig
from element_pose.engine.multianimal import MultiAnimalConfig, plan
from element_pose.engine.sides import SideRules, decode_with_sides, learn_sides
from element_pose.engine.targets import decode

NAMES = ["head", "thorax", "legL", "legR", "eyeL", "eyeR"]


def _animals(n: int = 200, seed: int = 0, legs_cross: bool = False) -> np.ndarray:
    """Top-view animals at random places and headings: legs 30 px either side of the
    thorax -> head axis, eyes 4 px either side of the head (too close to rule)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(100, 400, (n, 2))
    heading = rng.uniform(-np.pi, np.pi, n)
    fwd = np.stack([np.cos(heading), np.sin(heading)], 1)
    # "left" as the sign of the cross product of the axis with the part, image coordinates
    left = np.stack([fwd[:, 1], -fwd[:, 0]], 1)
    side = np.where(rng.random(n) < 0.5, -1.0, 1.0)[:, None] if legs_cross else 1.0
    jitter = rng.normal(0, 2, (n, 6, 2))
    kp = np.stack([centre + 40 * fwd, centre,
                   centre + 30 * side * left + rng.uniform(-20, 20, (n, 1)) * fwd,
                   centre - 30 * side * left + rng.uniform(-20, 20, (n, 1)) * fwd,
                   centre + 40 * fwd + 4 * left, centre + 40 * fwd - 4 * left], 1)
    return kp + jitter


def test_sides_are_learned_only_where_the_labels_keep_them():
    rules, why = learn_sides(_animals(), NAMES)
    assert rules is not None and {rules.front, rules.back} == {0, 1}
    assert set(rules.sides) == {2, 3}  # the eyes sit too close to the axis
    assert rules.sides[2] == -rules.sides[3]
    assert "legL" in why and "eyeL" not in why
    assert SideRules.from_dict(rules.to_dict()) == rules
    crossed, why = learn_sides(_animals(legs_cross=True), NAMES)  # a side view: no rule
    assert crossed is None and why.startswith("no rule")
    assert learn_sides(_animals(), ["head", "thorax", "legL", "leg_right", "a", "b"])[0] is None


def test_decoding_keeps_a_ruled_part_on_its_side():
    stride, h, w = 4, 16, 16
    heat = torch.full((1, 4, h, w), -8.0)
    offsets = torch.zeros(1, 4, 2, h, w)
    # axis: back (1) at cell (8, 12) -> front (0) at cell (8, 2): pointing up the crop
    heat[0, 0, 2, 8] = heat[0, 1, 12, 8] = 5.0
    # part 2 must lie on the side of negative cross product: x < the axis's x when the axis
    # points up (y decreasing) in image coordinates; its strongest peak is on the other side
    heat[0, 2, 7, 13] = 4.0
    heat[0, 2, 7, 3] = 2.0
    heat[0, 3, 7, 13] = 3.0
    rules = SideRules(front=0, back=1, sides={2: -1, 3: 1})
    plain = decode(heat, offsets, stride)
    kept = decode_with_sides(heat, offsets, stride, rules)
    assert plain[0, 2, 0] == 13 * stride + 1.5           # the wrong side wins unruled
    assert kept[0, 2, 0] == 3 * stride + 1.5             # its best peak on its own side
    assert kept[0, 2, 2] < plain[0, 2, 2]                # with the lower confidence it has
    torch.testing.assert_close(kept[0, [0, 1, 3]], plain[0, [0, 1, 3]])  # right already
    assert torch.equal(decode_with_sides(heat, offsets, stride, None), plain)


def test_plan_learns_sides_and_flip_test_from_the_labels():
    kp = _animals(40).reshape(20, 2, 6, 2)
    p = plan([(500, 500)] * 20, kp, EngineConfig(), MultiAnimalConfig(), bodyparts=NAMES)
    assert p.sides is not None and set(p.sides.sides) == {2, 3}
    assert p.multianimal.sides is True and p.multianimal.flip_test is True
    off = plan([(500, 500)] * 20, kp, EngineConfig(),
               MultiAnimalConfig(sides=False, flip_test=False), bodyparts=NAMES)
    assert off.sides is None and off.multianimal.sides is False
    assert off.multianimal.flip_test is False
    crossed = _animals(40, legs_cross=True).reshape(20, 2, 6, 2)
    auto = plan([(500, 500)] * 20, crossed, EngineConfig(), MultiAnimalConfig(),
                bodyparts=NAMES)
    assert auto.sides is None and auto.multianimal.sides is False
    with pytest.raises(ConfigError, match="multianimal.sides"):
        plan([(500, 500)] * 20, crossed, EngineConfig(), MultiAnimalConfig(sides=True),
             bodyparts=NAMES)
