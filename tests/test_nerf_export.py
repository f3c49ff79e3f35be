"""``gridfield render`` (camera paths into videos) and ``gridfield export-mesh`` on a tiny trained scene:
frame counts and sizes read back by imageio, path geometry, path files mapped from the capture's frame,
and a mesh whose vertices lie near the scene maker's own mesh."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from gridfield.cli import main
from gridfield.render import paths
from gridfield.render.paths import interpolate_poses, read_path_file, spiral_poses
from gridfield.render.rays import look_at, orbit_poses

trimesh = pytest.importorskip("trimesh")


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    from gridfield.data.scene_maker import make_scene
    from gridfield.tasks.nerf import NerfConfig, run
    from gridfield.training import TrainConfig

    root = tmp_path_factory.mktemp("export")
    scene = make_scene("torus_knot", root / "scene", views=20, test_views=2, size=32)
    cfg = NerfConfig(scene=scene, model="dense", appearance="sh", resolution=48, batch_rays=1024, occ_start=30,
                     occ_every=8, occ_resolution=64, turntable_frames=0,
                     train=TrainConfig(steps=300, progress=False, out=root / "out"))
    run(cfg)
    return root / "out" / "checkpoint.pt"


def test_render_orbit_gif_and_mp4(ck, tmp_path):
    assert main(["render", str(ck), "--frames", "5", "--downscale", "2", "--out", str(tmp_path / "v.gif"),
                 "--no-progress"]) == 0
    frames = iio.imread(tmp_path / "v.gif")
    assert frames.shape[:3] == (5, 16, 16)
    assert frames.std() > 5  # the object shows (not a blank image)
    pytest.importorskip("imageio_ffmpeg")
    assert main(["render", str(ck), "--frames", "4", "--path", "spiral", "--out", str(tmp_path / "v.mp4"),
                 "--no-progress"]) == 0
    video = iio.imread(tmp_path / "v.mp4", plugin="FFMPEG")
    assert video.shape[0] == 4 and video.shape[1:3] == (32, 32)


def _ring(center, radius, elevation, azimuths):
    """Cameras at ``radius`` / ``elevation`` about ``center`` looking at it, at ``azimuths`` (degrees)."""
    az, el = np.radians(np.asarray(azimuths, np.float64)), np.radians(elevation)
    eye = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(az.shape, np.sin(el))], -1) * radius
    c = torch.tensor(center, dtype=torch.float64)
    return look_at(torch.from_numpy(eye) + c, c).double()


def _looks_at(poses, center):
    """Distance of ``center`` from each camera's optical axis ``[N]``."""
    q = torch.tensor(center, dtype=torch.float64) - poses[:, :3, 3].double()
    fwd = -poses[:, :3, 2].double()
    return (q - (q * fwd).sum(-1, keepdim=True) * fwd).norm(dim=-1)


def test_orbit_circles_the_focus_of_a_surrounding_capture():
    center = (0.7, -0.4, 0.2)
    train = _ring(center, 2.0, 20.0, np.arange(0, 360, 30) + 5.0)
    orbit = paths.capture_orbit(train)
    np.testing.assert_allclose(orbit["center"], center, atol=1e-5)
    assert abs(orbit["radius"] - 2.0) < 1e-5 and abs(orbit["elevation"] - 20.0) < 1e-4
    assert orbit["sweep"] == 360.0 and abs(orbit["azimuth"] - (-175.0)) < 1e-6  # from the lowest azimuth
    path = paths.orbit_path(24, **orbit)
    assert float(_looks_at(path, center).max()) < 1e-5
    dist = (path[:, :3, 3].double() - torch.tensor(center, dtype=torch.float64)).norm(dim=-1)
    torch.testing.assert_close(dist, torch.full((24,), 2.0, dtype=torch.float64), atol=1e-5, rtol=0)


def test_orbit_of_a_one_sided_capture_sweeps_its_arc():
    """Cameras on a 100-degree arc (like the fox): the orbit stays on it, going there and back."""
    center = (-1.0, 0.5, 0.0)
    train = _ring(center, 1.5, -5.0, np.linspace(-150, -50, 20))
    orbit = paths.capture_orbit(train)
    assert abs(orbit["sweep"] - 100.0) < 1e-4 and abs(orbit["azimuth"] - (-150.0)) < 1e-4
    path = paths.orbit_path(40, **orbit)
    q = path[:, :3, 3].double() - torch.tensor(center, dtype=torch.float64)
    az = torch.rad2deg(torch.atan2(q[:, 1], q[:, 0]))
    assert float(az.min()) > -150.0 - 1e-4 and float(az.max()) < -50.0 + 1e-4
    assert abs(float(az[0]) + 150.0) < 1e-4 and abs(float(az[20]) + 50.0) < 1e-4  # there at half time
    torch.testing.assert_close(az[1:20], az[21:40].flip(0), atol=1e-4, rtol=0)  # and back the same way
    assert float(_looks_at(path, center).max()) < 1e-5


def test_older_checkpoints_get_the_orbit_of_their_training_cameras():
    train = _ring((0.3, 0.2, 0.0), 1.5, 10.0, np.linspace(0, 80, 9)).float()
    old = {"radius": 4.0, "elevation": 30.0, "train_c2w": train}  # a camera record without the orbit keys
    want = paths.orbit_path(6, **paths.capture_orbit(train))
    torch.testing.assert_close(paths.stored_orbit_path(6, old), want)
    torch.testing.assert_close(paths.stored_orbit_path(6, {"radius": 4.0, "elevation": 30.0}), orbit_poses(6))


def test_parallel_cameras_have_no_focus():
    poses = torch.eye(4, dtype=torch.float64).repeat(5, 1, 1)
    poses[:, 0, 3] = torch.arange(5.0)  # a row of cameras all looking down -Z
    assert paths.focus_point(poses.numpy()) is None
    assert paths.capture_orbit(poses)["center"] == [0.0, 0.0, 0.0]


def test_interpolate_passes_through_the_keys():
    keys = orbit_poses(4, 4.0, 30.0)
    path = interpolate_poses(keys, 10)  # t = 0, 1/3, ..., 3: keys at 0, 3, 6, 9
    torch.testing.assert_close(path[[0, 3, 6, 9]], keys, atol=1e-5, rtol=0)
    rot = path[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(10, 3, 3), atol=1e-5, rtol=0)
    mid = path[1, :3, 3].norm()  # linear positions cut the circle's chord
    assert float(mid) < 4.0


def test_spiral_looks_at_its_focus():
    train = orbit_poses(12, 4.0, 30.0)[:3]  # three cameras on one side
    path = spiral_poses(train, 16, focus=2.0)
    mean_pos = train[:, :3, 3].mean(0)
    back = train[:, :3, 2].mean(0)
    target = mean_pos - 2.0 * back / back.norm()
    to_target = target - path[:, :3, 3]
    cos = (-path[:, :3, 2] * to_target).sum(-1) / to_target.norm(dim=-1)
    torch.testing.assert_close(cos, torch.ones(16), atol=1e-3, rtol=0)
    assert float((path[:, :3, 3] - mean_pos).norm(dim=-1).max()) > 1e-2  # it moves


def test_path_file_is_mapped_from_the_capture_frame(tmp_path):
    scene_poses = orbit_poses(3, 1.0, 10.0).double()
    T = np.eye(4)
    T[:3, :3] = 2.5 * np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])  # scale 2.5, a quarter turn
    T[:3, 3] = [1.0, -2.0, 0.5]
    world = np.einsum("ij,njk->nik", T, scene_poses.numpy())
    world[:, :3, :3] /= 2.5
    (tmp_path / "p.json").write_text(json.dumps({"camera_path": [{"camera_to_world": m.reshape(-1).tolist()}
                                                                  for m in world]}))
    torch.testing.assert_close(read_path_file(tmp_path / "p.json", T), scene_poses.float(), atol=1e-5, rtol=0)


def test_export_mesh_lies_on_the_object(ck, tmp_path):
    from gridfield.data.meshes import load_mesh, normalize, signed_distance

    assert main(["export-mesh", str(ck), "--resolution", "64", "--out", str(tmp_path / "m.ply")]) == 0
    mesh = trimesh.load(tmp_path / "m.ply", process=False)
    assert len(mesh.vertices) > 500 and mesh.visual.vertex_colors.shape[1] == 4
    assert mesh.visual.vertex_colors[:, :3].std() > 5  # coloured, not one flat colour
    truth, _ = load_mesh("torus_knot")
    truth, _ = normalize(truth, 1.0)  # the scene maker's object radius
    dist = np.abs(signed_distance(truth, np.asarray(mesh.vertices)[::7]))  # libigl
    assert float(np.median(dist)) < 0.06, float(np.median(dist))  # the knot's tube radius is ~0.2
