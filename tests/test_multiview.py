"""3D: calibration from board images, calibration files, triangulation and the multiview tables.

The synthetic rig (``sample.make_rig``) renders a ChArUco board seen by three cameras at once;
the detected corners, the calibration and the triangulation are then checked against the
rig's known geometry. Tests on ../shared/data's four-camera session skip when it is absent.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset, write_video

from element_pose.calibration import Board, calibrate, detect_in_images, relative_centers
from element_pose.io.anipose import (
    read_anipose_calibration,
    read_dlc3d_calibration,
    write_anipose_calibration,
)
from element_pose.sample import make_rig, render_board_views
from element_pose.triangulation import align_by_timestamps, triangulate

BOARD = Board("charuco", 5, 7, 30.0, 22.0, 4, 50)
PARTS = ["nose", "ear", "tail"]


@pytest.fixture(scope="module")
def rig():
    return make_rig(3, 640, 480, focal=900)


@pytest.fixture(scope="module")
def board_folders(rig, tmp_path_factory):
    return render_board_views(tmp_path_factory.mktemp("board"), BOARD, rig, n_views=16)


def _baseline(cameras) -> float:
    centers = np.array([c.center for c in cameras])
    return float(np.median([np.linalg.norm(a - b) for i, a in enumerate(centers) for b in centers[i + 1:]]))


def test_calibration_from_rendered_board_images_recovers_the_rig(rig, board_folders):
    detections, sizes = {}, {}
    for cam in rig:
        detections[cam.name], sizes[cam.name] = detect_in_images(board_folders[cam.name].glob("*.png"), BOARD)
    result = calibrate(detections, sizes, BOARD)
    assert all(error < 0.5 for error in result.errors.values()), result.errors
    assert result.shared_views >= 10
    shift = np.linalg.norm(relative_centers(result.cameras) - relative_centers(rig), axis=1)
    assert shift.max() < 0.03 * _baseline(rig), shift
    for ours, truth in zip(result.cameras, rig, strict=True):
        assert abs(ours.matrix[0, 0] - truth.matrix[0, 0]) < 0.03 * truth.matrix[0, 0]


def test_too_few_board_views_and_unlinked_cameras_are_refused(rig, board_folders):
    detections, sizes = {}, {}
    for cam in rig:
        detections[cam.name], sizes[cam.name] = detect_in_images(board_folders[cam.name].glob("*.png"), BOARD)
    few = {**detections, "cam1": dict(list(detections["cam1"].items())[:2])}
    with pytest.raises(ValueError, match="'cam1'.*views.*4 are needed"):
        calibrate(few, sizes, BOARD)
    # cam2's views renamed so no view is shared with the others
    apart = {**detections, "cam2": {f"x{k}": v for k, v in detections["cam2"].items()}}
    with pytest.raises(ValueError, match=r"\['cam2'\] share no board view"):
        calibrate(apart, sizes, BOARD)


def _project_all(cameras, points):
    return np.stack([cam.project(points) for cam in cameras])


def test_triangulation_is_exact_weighted_and_leaves_a_wrong_camera_out(rig):
    rng = np.random.default_rng(0)
    points = rng.normal(0, 60, (50, 3, 3))
    pixels = _project_all(rig, points) + rng.normal(0, 0.3, (3, 50, 3, 2))
    scores = np.ones((3, 50, 3))
    out = triangulate(pixels, rig, scores)
    assert np.nanmax(np.linalg.norm(out.points - points, axis=-1)) < 2.0
    assert np.median(out.errors) < 0.6 and (out.n_cameras == 3).all()

    # one camera sees the wrong thing in frames 0-9: it is left out there and only there
    wrong = pixels.copy()
    wrong[1, :10] += 60
    out = triangulate(wrong, rig, scores)
    assert (out.n_cameras[:10] == 2).all() and not out.used[1, :10].any()
    assert (out.n_cameras[10:] == 3).all()
    assert np.nanmax(np.linalg.norm(out.points - points, axis=-1)) < 3.0
    plain = triangulate(wrong, rig, scores, {"threshold": 1e6})
    assert np.linalg.norm(plain.points[:10] - points[:10], axis=-1).mean() > 10

    # low likelihood: not used; below min_cameras: NaN
    faint = scores.copy()
    faint[0, :5, 0] = 0.01
    faint[2, :5, 0] = 0.01
    out = triangulate(pixels, rig, faint, {"min_score": 0.1})
    assert np.isnan(out.points[:5, 0]).all() and (out.n_cameras[:5, 0] == 0).all()
    assert np.isfinite(out.points[5:, 0]).all()
    with pytest.raises(ValueError, match="min_cameras must be an int >= 2"):
        triangulate(pixels, rig, scores, {"min_cameras": 1})
    with pytest.raises(ValueError, match="Unknown triangulation parameter"):
        triangulate(pixels, rig, scores, {"treshold": 5})
    with pytest.raises(ValueError, match="3 cameras, 2 cameras given"):
        triangulate(pixels, rig[:2], scores)


def test_anipose_toml_round_trip_and_dlc3d_pickle(rig, tmp_path):
    path = write_anipose_calibration(tmp_path / "calibration.toml", rig, {"cam0": 0.3})
    back = read_anipose_calibration(path)
    assert [c.name for c in back] == [c.name for c in rig]
    for a, b in zip(back, rig, strict=True):
        np.testing.assert_allclose(a.extrinsics, b.extrinsics, atol=1e-9)
        np.testing.assert_allclose(a.matrix, b.matrix)

    # DeepLabCut 3D: cv2.stereoCalibrate's R, T of camera 2 relative to camera 1
    first, second = rig[0], rig[1]
    relative = second.rotation_matrix @ first.rotation_matrix.T
    translation = second.translation - relative @ first.translation
    params = {"cam0-cam1": {"cameraMatrix1": first.matrix, "cameraMatrix2": second.matrix,
                            "distCoeffs1": np.zeros((1, 5)), "distCoeffs2": np.zeros((1, 5)),
                            "R": relative, "T": translation.reshape(3, 1),
                            "image_shape": [(640, 480), (640, 480)]}}
    (tmp_path / "dlc3d" / "camera_matrix").mkdir(parents=True)
    (tmp_path / "dlc3d" / "camera_matrix" / "stereo_params.pickle").write_bytes(pickle.dumps(params))
    cams = read_dlc3d_calibration(tmp_path / "dlc3d")
    np.testing.assert_allclose(relative_centers(cams), relative_centers(rig[:2]), atol=1e-6)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"a-b": Evil()}))
    with pytest.raises(ValueError, match="builtins.print"):
        read_dlc3d_calibration(tmp_path / "evil.pickle")
    (tmp_path / "bad.toml").write_text("[cam_0]\nname = 'x'\n")
    with pytest.raises(ValueError, match="lacks 'size'"):
        read_anipose_calibration(tmp_path / "bad.toml")


def test_align_by_timestamps():
    times = np.arange(100) / 30
    shifted = np.arange(5, 110) / 30 + 0.004
    frames = align_by_timestamps([times, shifted])
    assert (frames[0] == np.arange(100)).all()
    assert frames[1][10] == 5 and frames[1][0] == -1
    with pytest.raises(ValueError, match="do not overlap"):
        align_by_timestamps([times, times + 100])


def test_four_camera_session_through_the_tables(pipeline, tmp_path):
    """../shared/data/sleap-anipose-minimal-session, end to end in the tables: calibrate the
    four cameras from their board images, load each view's proofread labels as a pose
    estimation, triangulate."""
    data = shared_dataset("sleap-anipose-minimal-session")
    mv, model = pipeline.multiview, pipeline.model
    names = ["back", "mid", "side", "top"]
    rig = mv.CameraRig.add("anipose4", names)
    board = mv.CalibrationBoard.add("anipose_charuco", data / "board.toml")
    task = mv.CalibrationTask.add_board(rig, 1, board, {n: data / n / "calibration_images" for n in names})
    imported = mv.CalibrationTask.add_file(rig, 2, data / "calibration.toml")
    mv.Calibration.populate(rig)
    errors = dict(zip(*(mv.Calibration.Camera & task).to_arrays("device", "reprojection_error"), strict=True))
    assert max(errors.values()) <= 1.0, errors
    ours = relative_centers(mv.Calibration.cameras(task))
    theirs = relative_centers(mv.Calibration.cameras(imported))
    baseline = np.linalg.norm(theirs[1] - theirs[0])          # back-mid, consistent in both
    assert np.linalg.norm(ours[1] - theirs[1]) <= 0.05 * baseline
    assert np.linalg.norm(ours[3] - theirs[3]) <= 0.05 * baseline
    # anipose's side entry repeats its top camera; the board images place side elsewhere
    assert np.allclose(theirs[2], theirs[3])
    assert np.linalg.norm(ours[2] - theirs[2]) > 0.5 * baseline

    pipeline.Subject.insert1({"subject": "anipose_mouse"}, skip_duplicates=True)
    session = {"subject": "anipose_mouse", "session_id": 1}
    pipeline.Session.insert1({**session, "session_datetime": "2022-02-24 13:52:00"}, skip_duplicates=True)
    models = {}
    for i, name in enumerate(names):
        rec = model.VideoRecording.add(session, i, {"device": name}, [data / name / f"minimal_{name}.mp4"])
        model.RecordingInfo.populate(rec)
        labels = data / name / f"minimal_{name}_proofread.analysis.h5"
        models[name] = model.Model.from_output_file(labels, f"proofread_{name}")["model_name"]
        model.PoseEstimationTask.add(rec, {"model_name": models[name]}, mode="load", output_path=labels)
    model.PoseEstimation.populate(session)
    multi = mv.MultiCameraRecording.add(session, 1, rig, {n: i for i, n in enumerate(names)})
    tri = mv.TriangulationTask.add(multi, task, models)
    mv.Triangulation.populate(multi)
    row = (mv.Triangulation & tri).fetch1()
    assert row["median_reprojection_error"] <= 3.0 and row["fraction_triangulated"] > 0.95
    assert row["mean_cameras_used"] >= 2.5
    figure = mv.Triangulation.plot_reprojection(tri, frame=60)
    assert len(figure.axes) == 4


# --- the tables ------------------------------------------------------------------------------


def _moving_points(n_frames: int) -> np.ndarray:
    t = np.arange(n_frames)[:, None]
    base = np.stack([40 * np.cos(t / 5), 10 * np.sin(t / 7), 40 * np.sin(t / 5)], -1)[:, 0]
    offsets = np.array([[0, 0, 0], [15, -10, 0], [-35, 5, 10]], float)
    return base[:, None, :] + offsets[None]


def test_multiview_tables_end_to_end(pipeline, tmp_path, data_root, rig, board_folders):
    from element_pose.io.dlc import write_dlc_output
    from element_pose.io.nwb import read_nwb_pose

    mv, model = pipeline.multiview, pipeline.model
    pipeline.Subject.insert1({"subject": "rig_mouse", "sex": "F", "subject_birth_date": "2026-01-01"},
                             skip_duplicates=True)
    session = {"subject": "rig_mouse", "session_id": 1}
    pipeline.Session.insert1({**session, "session_datetime": "2026-11-02 08:00:00"}, skip_duplicates=True)
    rig_key = mv.CameraRig.add("rig3", [c.name for c in rig])
    assert mv.CameraRig.cameras(rig_key) == ["cam0", "cam1", "cam2"]
    board_key = mv.CalibrationBoard.add("charuco5x7", BOARD)

    # cameras of another rig: refused, nothing inserted
    with pytest.raises(ValueError, match=r"\['camX'\] are not in rig 'rig3'"):
        mv.CalibrationTask.add_board(rig_key, 1, board_key, {"cam0": board_folders["cam0"],
                                                             "cam1": board_folders["cam1"],
                                                             "camX": board_folders["cam2"]})
    assert not mv.CalibrationTask & rig_key

    task = mv.CalibrationTask.add_board(rig_key, 1, board_key, {c.name: board_folders[c.name] for c in rig})
    toml = write_anipose_calibration(data_root / "rig3" / "calibration.toml", rig)
    imported = mv.CalibrationTask.add_file(rig_key, 2, toml)
    # a calibration with too few board detections: the error is kept, no row
    empty = data_root / "rig3" / "few"
    for cam in rig:
        (empty / cam.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(board_folders[cam.name].glob("*.png"))[:2]:
            (empty / cam.name / f.name).write_bytes(f.read_bytes())
    few = mv.CalibrationTask.add_board(rig_key, 3, board_key, {c.name: empty / c.name for c in rig})
    mv.Calibration.populate(rig_key, suppress_errors=True)
    assert mv.Calibration & task and mv.Calibration & imported and not mv.Calibration & few
    errors = (mv.Calibration.Camera & task).to_arrays("reprojection_error")
    assert errors.max() < 0.5
    assert np.abs(relative_centers(mv.Calibration.cameras(task)) - relative_centers(rig)).max() < 30
    exported = read_anipose_calibration(mv.Calibration.export_anipose(imported, tmp_path / "out.toml"))
    np.testing.assert_allclose(exported[2].extrinsics, rig[2].extrinsics, atol=1e-9)

    # videos of the three cameras, and the "detections" as DeepLabCut outputs of an external model
    n = 40
    truth = _moving_points(n)
    rng = np.random.default_rng(1)
    pixels = _project_all(rig, truth) + rng.normal(0, 0.4, (3, n, 3, 2))
    pixels[2, 20:25, 1] += 80                              # cam2 mistakes the ear for 5 frames
    model.Model.from_external("ext3d", "DeepLabCut", PARTS, scorer="DLC_ext3d")
    recordings = {}
    for c, cam in enumerate(rig):
        video = write_video(data_root / "rig3" / f"{cam.name}.mp4", n, 64, 48)
        rec = model.VideoRecording.add(session, 10 + c, {"device": cam.name}, [video])
        model.RecordingInfo.populate(rec)
        pose = np.concatenate([pixels[c], np.full((n, 3, 1), 0.9)], axis=-1)
        h5, _ = write_dlc_output(data_root / "rig3" / f"{cam.name}_dlc", pose, PARTS, "DLC_ext3d")
        model.PoseEstimationTask.add(rec, {"model_name": "ext3d"}, mode="load", output_path=h5)
        recordings[cam.name] = 10 + c
    model.PoseEstimation.populate({**session, "model_name": "ext3d"})

    # a recording of a camera outside the rig, and recordings of different lengths: refused
    pipeline.Device.insert1({"device": "other_cam"}, skip_duplicates=True)
    short = write_video(data_root / "rig3" / "short.mp4", n - 5, 64, 48)
    stray = model.VideoRecording.add(session, 20, {"device": "other_cam"}, [short])
    model.RecordingInfo.populate(stray)
    with pytest.raises(ValueError, match="filmed by 'other_cam', not by camera 'cam1'"):
        mv.MultiCameraRecording.add(session, 1, rig_key, {**recordings, "cam1": 20})
    short_cam1 = model.VideoRecording.add(session, 21, {"device": "cam1"}, [short])
    model.RecordingInfo.populate(short_cam1)
    with pytest.raises(ValueError, match="different frame counts.*cam1: 35"):
        mv.MultiCameraRecording.add(session, 1, rig_key, {**recordings, "cam1": 21})
    assert not mv.MultiCameraRecording & session

    multi = mv.MultiCameraRecording.add(session, 1, rig_key, recordings)
    # the short recording, matched by time instead: its missing frames are -1
    by_time = mv.MultiCameraRecording.add(session, 2, rig_key, {**recordings, "cam1": 21}, sync="timestamps")
    frame_map = mv.MultiCameraRecording.frame_map(by_time)
    assert frame_map.shape == (3, n) and (frame_map[1, :n - 5] == np.arange(n - 5)).all()
    assert (frame_map[1, n - 5:] == -1).all()
    # a body part missing from one view's model
    model.Model.from_external("ext3d_2parts", "DeepLabCut", PARTS[:2], scorer="DLC_two")
    h5, _ = write_dlc_output(data_root / "rig3" / "two_dlc", np.concatenate(
        [pixels[0][:, :2], np.full((n, 2, 1), 0.9)], axis=-1), PARTS[:2], "DLC_two")
    rec0 = {**session, "recording_id": recordings["cam0"]}
    model.PoseEstimationTask.add(rec0, {"model_name": "ext3d_2parts"}, mode="load", output_path=h5)
    model.PoseEstimation.populate({**rec0, "model_name": "ext3d_2parts"})
    with pytest.raises(ValueError, match=r"camera 'cam0' lacks \['tail'\]"):
        mv.TriangulationTask.add(multi, task, {"cam0": "ext3d_2parts", "cam1": "ext3d", "cam2": "ext3d"})
    assert not mv.TriangulationTask & multi

    tri = mv.TriangulationTask.add(multi, task, "ext3d")
    tri_imported = mv.TriangulationTask.add(multi, imported, "ext3d", params={"smooth_window": 3})
    mv.Triangulation.populate(multi)
    points, parts, extra = mv.Triangulation.points_array(tri_imported)
    assert parts == PARTS and points.shape == (n, 3, 3)
    row = (mv.Triangulation & tri).fetch1()
    assert row["median_reprojection_error"] < 1.5 and row["fraction_triangulated"] == 1.0
    # the imported calibration is the rig itself; the board calibration's world is cam0's
    # frame, and its scale is as good as the board views (a few percent here)
    assert np.linalg.norm(points - truth, axis=-1).mean() < 2.0
    board_points, _, board_extra = mv.Triangulation.points_array(tri)
    cam0 = rig[0]
    truth_cam0 = truth @ cam0.rotation_matrix.T + cam0.translation
    assert np.linalg.norm(board_points - truth_cam0, axis=-1).mean() < 0.03 * np.linalg.norm(cam0.center)
    assert (board_extra["n_cameras"][20:25, 1] == 2).all() and (board_extra["n_cameras"][:20] == 3).all()

    trajectory = mv.Triangulation.get_trajectory(tri, ["nose"], index="time")
    assert list(trajectory.columns.get_level_values("coords")) == ["x", "y", "z", "error", "n_cameras", "score"]
    assert trajectory.index.name == "time" and len(trajectory) == n
    csv = pd.read_csv(mv.Triangulation.export_anipose(tri, tmp_path / "points3d.csv"))
    assert {"nose_x", "tail_z", "ear_ncams", "fnum"} <= set(csv.columns)
    np.testing.assert_allclose(csv["nose_x"], board_points[:, 0, 0])
    nwb = mv.Triangulation.export_nwb(tri, tmp_path / "rig3.nwb", subject={"age": "P300D"})
    pose, nwb_parts, stamps = read_nwb_pose(nwb)
    assert pose.shape == (n, 3, 4) and nwb_parts == PARTS and len(stamps) == n
    np.testing.assert_allclose(pose[..., :3], board_points)
    h5 = pd.read_hdf(mv.Triangulation.export_h5(tri, tmp_path / "points3d.h5"), "points3d")
    assert h5.shape == (n, 3 * 6)

    # plots: 3D trajectory and reprojection check, as figures
    figure = mv.Triangulation.plot_trajectory(tri)
    assert figure.axes and figure.axes[0].name == "3d"
    check = mv.Triangulation.plot_reprojection(tri, frame=22)
    assert len(check.axes) == 3


def test_board_video_gives_the_same_corners_as_its_images(rig, board_folders, tmp_path):
    import cv2

    from element_pose.calibration import detect_in_video

    images = sorted(board_folders["cam0"].glob("*.png"), key=lambda p: int(p.stem.split("-")[-1]))
    writer = cv2.VideoWriter(str(tmp_path / "board.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, rig[0].size)
    for path in images:
        writer.write(cv2.imread(str(path)))
    writer.release()
    from_images, _ = detect_in_images(images, BOARD)
    from_video, size = detect_in_video(tmp_path / "board.avi", BOARD, step=1)
    assert size == rig[0].size and sorted(from_video) == sorted(from_images)
    compared = 0
    for view, (ids, corners) in from_images.items():
        video_ids, video_corners = from_video[view]
        common, a, b = np.intersect1d(ids, video_ids, return_indices=True)
        assert len(common) >= 0.8 * len(ids)
        if len(common):
            assert np.abs(corners[a] - video_corners[b]).max() < 1.0
            compared += 1
    assert compared >= 10
    with pytest.raises(ValueError, match="step must be a positive int"):
        detect_in_video(tmp_path / "board.avi", BOARD, step=0)


def test_checkerboard_calibrates_one_camera(rig, tmp_path):
    board = Board("checkerboard", 7, 9, 25.0)
    folders = render_board_views(tmp_path, board, rig[:1], n_views=10, seed=2)
    views, size = detect_in_images(folders["cam0"].glob("*.png"), board)
    assert sum(len(ids) == 48 for ids, _ in views.values()) >= 6
    result = calibrate({"cam0": views}, {"cam0": size}, board)
    assert result.errors["cam0"] < 0.5
    assert abs(result.cameras[0].matrix[0, 0] - rig[0].matrix[0, 0]) < 0.03 * rig[0].matrix[0, 0]
    with pytest.raises(ValueError, match="marker_length"):
        Board("charuco", 5, 7, 30.0)
    with pytest.raises(ValueError, match="squares_x must be an int >= 3"):
        Board("checkerboard", 2.5, 7, 30.0)
