"""The procedural world: determinism, cross-identity ground truth, masks against pixels, poses, skeleton maps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from directanimator.errors import InputError
from training.world import (
    Background,
    EstimatorErrors,
    Motion,
    Placement,
    PoseSequence,
    WorldConfig,
    make_sample,
    render_background,
    render_clip,
    render_skeleton,
    sample_identity,
    sample_motion,
    simulate_estimator,
    to_openpose,
)
from training.world.skeleton import DOF_INDEX, JOINT_INDEX as J
from training.world.skeleton_map import LIMB_OPACITY, OPENPOSE_COLOURS, OPENPOSE_JOINTS, OPENPOSE_LIMBS

SMALL = WorldConfig(height=64, width=64, num_frames=5, fps=12.0)
FIELDS = ("frames", "person_masks", "face_masks", "joints", "joint_visible", "face_boxes", "face_valid")


def identity(seed: int = 1):
    return sample_identity(np.random.default_rng(seed), f"t{seed}")


def still(**angles) -> Motion:
    """A motion holding the rest pose with some joint angles changed."""
    pose = PoseSequence.rest(1)
    for name, value in angles.items():
        pose.angles[0, DOF_INDEX[name]] = value
    return Motion.still(pose)


def render(motion: Motion, *, who=None, background=Background(), placement=Placement(0.5, 0.55, 0.8),
           times=(0.0,), size=96):
    return render_clip(who or identity(), motion, placement, background, list(times), height=size, width=size)


def bone_directions(joints: torch.Tensor) -> torch.Tensor:
    """Unit vectors of the limb bones ``[F, B, 2]``."""
    pairs = [("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"),
             ("right_elbow", "right_wrist"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
             ("right_hip", "right_knee"), ("right_knee", "right_ankle")]  # fmt: skip
    vectors = torch.stack([joints[:, J[b]] - joints[:, J[a]] for a, b in pairs], dim=1)
    return vectors / vectors.norm(dim=-1, keepdim=True)


def test_same_seed_renders_identical_frames_and_truth_bit_for_bit():
    first, again = make_sample(3, SMALL, seed=7), make_sample(3, SMALL, seed=7)
    for part in ("clip", "reference", "cross_reference", "cross_target", "pseudo_driving"):
        for name in FIELDS:
            assert torch.equal(getattr(getattr(first, part), name), getattr(getattr(again, part), name)), (part, name)
    assert not torch.equal(first.clip.frames, make_sample(4, SMALL, seed=7).clip.frames)
    assert not torch.equal(first.clip.frames, make_sample(3, SMALL, seed=8).clip.frames)


def test_a_sample_does_not_depend_on_which_other_parts_are_rendered():
    full = make_sample(2, SMALL)
    alone = make_sample(2, replace(SMALL, cross_id=False, pseudo=False))
    assert alone.cross_target is None and alone.pseudo_driving is None
    assert torch.equal(full.clip.frames, alone.clip.frames)
    assert torch.equal(full.reference.frames, alone.reference.frames)


def test_cross_identity_target_replays_exactly_the_driving_joint_trajectory_at_the_references_place():
    sample = make_sample(5, replace(SMALL, num_frames=9))
    driving, target, reference = sample.clip, sample.cross_target, sample.cross_reference
    assert target.identity == reference.identity != driving.identity
    for name in ("angles", "body_yaw", "head_yaw", "mouth", "eyes", "brows", "root", "scale"):
        assert np.array_equal(getattr(target.pose, name), getattr(driving.pose, name)), name
    # same joint angles: every limb points the same way in every frame, whatever the body proportions
    torch.testing.assert_close(bone_directions(target.joints), bone_directions(driving.joints), atol=1e-4, rtol=0)
    # rooted where B's reference stands, travelling by the same amount in units of each one's own height
    width, height = SMALL.width, SMALL.height
    pelvis_t, pelvis_d = target.joints[:, J["pelvis"], 0], driving.joints[:, J["pelvis"], 0]
    assert target.placement == reference.placement
    assert float(pelvis_t[0]) == pytest.approx(reference.placement.x * width, abs=1e-3)
    assert float(reference.joints[0, J["pelvis"], 0]) == pytest.approx(reference.placement.x * width, abs=1e-3)
    torch.testing.assert_close((pelvis_t - pelvis_t[0]) / (target.placement.height * height),
                               (pelvis_d - pelvis_d[0]) / (driving.placement.height * height), atol=1e-4, rtol=0)
    # zooming in and out by the same factors: torso length relative to the first frame
    size_t = (target.joints[:, J["neck"]] - target.joints[:, J["pelvis"]]).norm(dim=-1)
    size_d = (driving.joints[:, J["neck"]] - driving.joints[:, J["pelvis"]]).norm(dim=-1)
    torch.testing.assert_close(size_t / size_t[0], size_d / size_d[0], atol=1e-4, rtol=0)


def test_person_mask_is_exactly_where_the_background_shows_through():
    motion = sample_motion(np.random.default_rng(0), duration=0.5)
    black = Background(kind="flat", colours=((0.0, 0.0, 0.0),) * 3)
    texture = Background(kind="stripes", colours=((0.9, 0.2, 0.1), (0.1, 0.3, 0.9), (0.5, 0.5, 0.5)), scale=0.07)
    times = (0.0, 0.2, 0.4)
    on_black = render(motion, background=black, times=times)
    on_texture = render(motion, background=texture, times=times)
    torch.testing.assert_close(on_black.person_masks, on_texture.person_masks, atol=0, rtol=0)
    backdrop = torch.from_numpy(render_background(texture, times, height=96, width=96))
    person = on_texture.person_masks[..., None]
    # compositing: frame = character + (1 - mask) * background, so changing the background changes exactly that
    torch.testing.assert_close(on_texture.frames - on_black.frames, (1 - person) * backdrop, atol=2e-5, rtol=0)
    outside = on_texture.person_masks == 0
    assert torch.equal(on_texture.frames[outside], backdrop[outside])
    assert 0.03 < float(on_texture.person_masks.mean()) < 0.5
    assert bool(((on_texture.person_masks > 0) & (on_texture.person_masks < 1)).any())  # anti-aliased edges


@pytest.mark.parametrize("head_yaw", [0.0, 1.1])
def test_face_mask_holds_the_face_features_inside_the_person_and_the_face_box(head_yaw):
    closed = replace(still(), head_turn=np.array([[head_yaw, 0.0, np.pi / 2], [0.0, 0.0, 0.0]]))  # turned face
    talking = replace(closed, speech=np.array([1.0, 0.0, 0.0, 0.0, 0.0]))  # mouth wide open
    blinking = replace(closed, blinks=np.array([10.0, 0.0]))  # a blink at t = 0
    base = render(closed, placement=Placement(0.5, 1.2, 2.2), size=160)  # a close-up: a big face
    assert bool(base.face_valid[0])
    face, person = base.face_masks[0], base.person_masks[0]
    assert float(face.sum()) > 20
    assert bool((face <= person + 1e-6).all())
    x0, y0, x1, y1 = base.face_boxes[0].tolist()
    ys, xs = torch.nonzero(face > 0, as_tuple=True)
    assert xs.min() + 1 > x0 and xs.max() < x1 and ys.min() + 1 > y0 and ys.max() < y1  # pixels touch the box
    for expression in (talking, blinking):
        moved = render(expression, placement=Placement(0.5, 1.2, 2.2), size=160)
        changed = (moved.frames[0] - base.frames[0]).abs().amax(-1) > 0
        assert bool(changed.any())
        assert bool((face[changed] > 0).all())  # expressions change face pixels only


def test_an_arm_across_the_face_hides_it_from_the_face_mask_but_not_from_the_person():
    open_face = render(still())
    covered = render(still(left_shoulder=-1.6, left_elbow=-1.96))
    assert bool(covered.face_valid[0])
    lost = (open_face.face_masks[0] > 0.99) & (covered.face_masks[0] == 0)
    assert int(lost.sum()) > 10
    assert bool((covered.person_masks[0][lost] > 0.99).all())
    assert float(covered.face_masks.sum()) < 0.85 * float(open_face.face_masks.sum())


def test_a_back_facing_character_has_no_face_and_shows_its_sides_mirrored():
    front = render(still())
    back_motion = replace(still(), yaw_keys=np.array([[0.0, np.pi]]))
    back = render(back_motion)
    assert not bool(back.face_valid[0]) and float(back.face_masks.sum()) == 0
    for name in ("nose", "left_eye", "right_eye"):
        assert bool(front.joint_visible[0, J[name]]) and not bool(back.joint_visible[0, J[name]])
    assert front.joints[0, J["left_shoulder"], 0] > front.joints[0, J["right_shoulder"], 0]
    assert back.joints[0, J["left_shoulder"], 0] < back.joints[0, J["right_shoulder"], 0]
    assert float(back.person_masks.sum()) > 0.8 * float(front.person_masks.sum())


def test_the_same_scene_renders_at_any_size_with_joints_scaling_exactly():
    motion = sample_motion(np.random.default_rng(3), duration=0.3)
    small = render(motion, size=64)
    large = render(motion, size=512)
    torch.testing.assert_close(large.joints, 8 * small.joints, atol=2e-3, rtol=1e-5)
    shrunk = torch.nn.functional.avg_pool2d(large.person_masks[None], 8)[0]
    a, b = shrunk > 0.5, small.person_masks > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.85
    wide = render_clip(identity(), motion, Placement(), Background(), [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                       height=64, width=112)  # fmt: skip
    assert wide.frames.shape == (7, 64, 112, 3) and wide.face_masks.shape == (7, 64, 112)


def test_joint_angle_trajectories_are_smooth_and_within_limits():
    motion = sample_motion(np.random.default_rng(11), duration=2.0, turn_probability=1.0)
    pose = motion.sample(np.arange(0, 2.0, 0.005))
    steps = np.abs(np.diff(pose.angles, axis=0))
    assert steps.max() < 0.1  # radians per 5 ms: no jumps
    curvature = np.abs(np.diff(pose.angles, n=2, axis=0))
    assert curvature.max() < 0.01
    assert np.abs(np.diff(pose.body_yaw)).max() < 0.1
    assert np.ptp(pose.angles, axis=0).max() > 0.3  # but it does move


def test_sampled_motions_include_turns_away_and_hands_over_the_face():
    turned = covered = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        who = sample_identity(rng, "m")
        motion = sample_motion(rng, duration=1.5, turn_probability=1.0)
        clip = render(motion, who=who, times=np.arange(0, 1.5, 1 / 6), size=64)
        turned += bool((~clip.face_valid).any())
        hands = clip.joints[:, [J["left_hand"], J["right_hand"], J["left_wrist"], J["right_wrist"]]]
        boxes = clip.face_boxes[:, None]
        inside = ((hands[..., 0] > boxes[..., 0]) & (hands[..., 0] < boxes[..., 2]) & (hands[..., 1] > boxes[..., 1])
                  & (hands[..., 1] < boxes[..., 3]))  # fmt: skip
        covered += bool((inside.any(-1) & clip.face_valid).any())
    assert turned >= 4 and covered >= 2


def test_skeleton_map_draws_openpose_coloured_limbs_where_the_joints_are():
    clip = render(still(left_shoulder=1.2), size=128)
    keypoints, visible = to_openpose(clip.joints.numpy(), clip.joint_visible.numpy())
    assert keypoints.shape == (1, 18, 2)
    image = render_skeleton(keypoints, visible, height=128, width=128)
    assert image.shape == (1, 128, 128, 3)
    shoulder, elbow = OPENPOSE_JOINTS.index("left_shoulder"), OPENPOSE_JOINTS.index("left_elbow")
    limb = OPENPOSE_LIMBS.index((shoulder, elbow))
    x, y = ((keypoints[0, shoulder] + keypoints[0, elbow]) / 2).round().astype(int)
    expected = torch.from_numpy(OPENPOSE_COLOURS[limb] * LIMB_OPACITY)
    torch.testing.assert_close(image[0, y, x], expected, atol=0.02, rtol=0)
    assert float(image[0, :8, :8].abs().sum()) == 0  # black elsewhere


def test_estimator_errors_swap_drop_jitter_and_confuse_front_with_back():
    clip = render(still(), times=(0.0, 0.1, 0.2, 0.3))
    keypoints, visible = to_openpose(clip.joints.numpy(), clip.joint_visible.numpy())
    rng = np.random.default_rng(0)
    exact = simulate_estimator(keypoints, visible, EstimatorErrors(0, 0, 0, 0), rng=rng)
    assert np.array_equal(exact[0], keypoints) and np.array_equal(exact[1], visible)
    jittered, _ = simulate_estimator(keypoints, visible, EstimatorErrors(0, 0, 2.0, 0), rng=rng)
    assert 1.6 < np.std(jittered - keypoints) < 2.4
    dropped = simulate_estimator(keypoints, visible, EstimatorErrors(0, 1.0, 0, 0), rng=rng)[1]
    ends = [OPENPOSE_JOINTS.index(n) for n in ("left_wrist", "right_ankle", "left_elbow", "right_knee")]
    assert not dropped[:, ends].any() and dropped[:, OPENPOSE_JOINTS.index("neck")].all()
    swapped = simulate_estimator(keypoints, visible, EstimatorErrors(1.0, 0, 0, 0), rng=rng)[0]
    left_x = swapped[:, [OPENPOSE_JOINTS.index("left_wrist"), OPENPOSE_JOINTS.index("left_ankle")], 0]
    right_x = swapped[:, [OPENPOSE_JOINTS.index("right_wrist"), OPENPOSE_JOINTS.index("right_ankle")], 0]
    assert ((left_x < right_x).sum(axis=1) == 1).all()  # exactly one limb pair reversed per frame
    mirrored, shown = simulate_estimator(keypoints, visible, EstimatorErrors(0, 0, 0, 1.0), rng=rng)
    nose, left, right = (OPENPOSE_JOINTS.index(n) for n in ("nose", "left_shoulder", "right_shoulder"))
    assert (keypoints[:, left, 0] > keypoints[:, right, 0]).all()
    assert (mirrored[:, left, 0] < mirrored[:, right, 0]).all()
    assert visible[:, nose].all() and not shown[:, nose].any()


def test_bad_world_inputs_raise_input_errors_naming_the_problem():
    with pytest.raises(InputError, match="canvas"):
        render(still(), size=8)
    with pytest.raises(InputError, match="identities"):
        replace(SMALL, identities=1).validate()
    with pytest.raises(InputError, match="pose.angles"):
        from training.world import forward_kinematics

        bad = PoseSequence.rest(2)
        bad.angles = bad.angles[:, :3]
        forward_kinematics(identity().proportions, bad, Placement(), height=64, width=64)
    with pytest.raises(InputError, match="times"):
        still().sample([float("nan")])


def test_skeleton_maps_put_limbs_where_the_letterboxed_joints_are():
    from training.world.skeleton_map import OPENPOSE_JOINTS, skeleton_maps

    points = np.zeros((1, len(OPENPOSE_JOINTS), 2))
    shown = np.zeros((1, len(OPENPOSE_JOINTS)), bool)
    points[0, 1], points[0, 2] = (50.0, 40.0), (50.0, 80.0)  # neck -> right shoulder, vertical, in a 100x200 frame
    shown[0, [1, 2]] = True
    maps = skeleton_maps(points, shown, source=(100, 200), size=(64, 64))  # scale 0.32, bars of 16 px top/bottom
    assert maps.shape == (1, 64, 64, 3)
    lit = maps[0].sum(-1) > 0.2
    ys, xs = torch.nonzero(lit, as_tuple=True)
    assert abs(xs.float().mean().item() - 16.0) <= 1.0 and ys.min() >= 16 + 12 - 2 and ys.max() <= 16 + 26 + 2


def test_background_kinds_restrict_the_backdrop_and_keep_every_other_draw():
    from training.world.background import sample_background

    kinds = [sample_background(np.random.default_rng(k), kinds=("flat", "plasma")).kind for k in range(40)]
    assert set(kinds) == {"flat", "plasma"}
    for k in range(10):
        full = sample_background(np.random.default_rng(k))
        only = sample_background(np.random.default_rng(k), kinds=("room",))
        assert only.kind == "room" and only.colours == full.colours and only.velocity == full.velocity
    with pytest.raises(InputError, match="bricks"):
        sample_background(np.random.default_rng(0), kinds=("bricks",))
    config = WorldConfig(height=64, width=64, num_frames=2, backgrounds=("flat",), cross_id=False, pseudo=False)
    clip = make_sample(0, config, seed=5).clip
    outside = clip.frames[0][clip.person_masks[0] == 0]
    assert (outside - outside[0]).abs().max() < 1e-6  # one flat colour behind the person


def test_limb_thickness_widens_arms_and_legs_and_keeps_pose_and_backdrop():
    config = WorldConfig(height=96, width=96, num_frames=3, close_up_probability=0.0, cross_id=False, pseudo=False)
    thin = make_sample(3, config, seed=2).clip
    thick = make_sample(3, replace(config, limb_thickness=2.0), seed=2).clip
    assert thick.person_masks.sum() > 1.3 * thin.person_masks.sum()
    # the same motion, placement and backdrop: joints within 1.5 px (the standing height counts the legs'
    # thickness), and every pixel that neither person covers is identical
    assert (thick.joints - thin.joints).abs().max() < 1.5
    clear = (thin.person_masks == 0) & (thick.person_masks == 0)
    assert torch.equal(thin.frames[clear], thick.frames[clear])
    from training.world.pairs import thickened

    who = identity()
    assert thickened(who, 1.0) is who  # the default draws exactly the identities it drew before the option
    assert thickened(who, 2.0).proportions.arm_thickness > 1.9 * who.proportions.arm_thickness
    with pytest.raises(InputError, match="limb_thickness"):
        replace(config, limb_thickness=0.0).validate()


def test_plain_clothes_dress_the_same_identity_in_one_colour_and_keep_the_scene():
    from training.world.identity import plainly_dressed
    from training.world.pairs import pool_identity

    config = WorldConfig(height=96, width=96, num_frames=3, close_up_probability=0.0, identities=50,
                         cross_id=False, pseudo=False)
    for k in range(12):  # enough pool identities that some wear textures, short sleeves, skirts, accessories
        who = pool_identity(0, k)
        plain = plainly_dressed(who)
        assert (plain.shirt.kind, plain.trousers.kind, plain.sleeves, plain.legwear, plain.accessories) == (
            "plain", "plain", "long", "trousers", ())
        assert (plain.shirt.base, plain.trousers.base, plain.skin, plain.proportions, plain.face) == (
            who.shirt.base, who.trousers.base, who.skin, who.proportions, who.face)
    assert any(pool_identity(0, k).shirt.kind != "plain" or pool_identity(0, k).sleeves != "long"
               for k in range(12))
    varied = make_sample(4, config, seed=1).clip
    plain = make_sample(4, replace(config, plain_clothes=True), seed=1).clip
    # the same motion, placement and backdrop: the same joints and, outside both people, the same pixels
    assert torch.equal(varied.joints, plain.joints)
    clear = (varied.person_masks == 0) & (plain.person_masks == 0)
    assert torch.equal(varied.frames[clear], plain.frames[clear])
    assert not torch.equal(varied.frames, plain.frames)
    with pytest.raises(InputError, match="plain_clothes"):
        replace(config, plain_clothes=1).validate()


@pytest.mark.slow
def test_a_reference_in_place_keeps_its_pose_and_stands_where_the_clip_starts():
    from directanimator.cues import PersonGeometry, anchor_frames, fit_similarity, mask_boxes, mask_centre_columns
    from directanimator.cues import warp_masks

    config = WorldConfig(height=96, width=96, num_frames=9, close_up_probability=0.0, identities=50, pseudo=False)
    moved = []
    for index in range(8):
        roaming = make_sample(index, config, seed=2)
        still = make_sample(index, replace(config, reference_in_place=True), seed=2)
        # the same pose of the same moment; the pelvis where the clip's first frame has it (its height also
        # follows the bend of the legs, which differs between the two poses)
        assert np.array_equal(roaming.reference.pose.angles, still.reference.pose.angles)
        pelvis, start = still.reference.joints[0, J["pelvis"]], still.clip.joints[0, J["pelvis"]]
        assert abs(float(pelvis[0] - start[0])) < 1e-3 and abs(float(pelvis[1] - start[1])) < 3.0
        moved.append(float((roaming.reference.joints[0, J["pelvis"]] - still.reference.joints[0, J["pelvis"]]).norm()))
        assert torch.equal(roaming.clip.frames, still.clip.frames)  # only the reference changes
        # the location cue's first-frame anchor puts the clip's own masks nearly back onto themselves
        masks = still.clip.person_masks
        boxes, valid = mask_boxes(masks)
        t = fit_similarity(
            PersonGeometry(boxes, anchor_frames(valid, "first"), centres=mask_centre_columns(masks)[0]),
            PersonGeometry.picture(mask_boxes(still.reference.person_masks)[0][0],
                                   centre=float(mask_centre_columns(still.reference.person_masks)[0][0])))
        warped = warp_masks(masks, t, (96, 96)) > 0.5
        overlap = ((warped & (masks > 0.5)).sum((1, 2)) / (warped | (masks > 0.5)).sum((1, 2))).mean()
        assert overlap > 0.6, (index, float(overlap))
    assert max(moved) > 2.0  # travel and zoom did move some roaming references off the clip's start
    with pytest.raises(InputError, match="reference_in_place"):
        replace(config, reference_in_place=1).validate()
