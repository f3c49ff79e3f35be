"""The viser server of ``gridfield view``: scene objects, controls and one render loop per browser.

:class:`Viewer` starts a viser server (its bundled web client; nothing is downloaded) for a loaded
scene (:mod:`gridfield.viewer.scenes`):

- NeRF: the render of the browser's orbit camera as the scene's background, progressive
  (:class:`~gridfield.viewer.progressive.Progressive`: a quarter of the resolution while the camera
  moves, the full one once it stops), the training cameras as frustums, RGB / depth and a
  resolution slider;
- SDF: the marching-cubes mesh of the field (unit frame) and a movable, coloured slice plane;
- image: the field rendered for the canvas at any zoom, centre and resolution.

Every picture comes from :mod:`gridfield.viewer.frames`; this module only moves them to the browser.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
import viser

from gridfield.render.rays import look_at
from gridfield.viewer import frames
from gridfield.viewer.cameras import ViewCamera, frustum_pose, matrix_to_quat, orbit_position, vertical_fov
from gridfield.viewer.progressive import FULL, Progressive, Ticket
from gridfield.viewer.scenes import ImageScene, NerfScene, SDFScene

#: Picture quality -> divisor of the resolution slider.
PREVIEW_DIVISOR = 4
#: Slice-plane orientation per axis: local (x, y, z) of viser's image plane -> world. The image's
#: columns run along local x and its rows along local y, so ``sdf_slice``'s ``[a, b]`` (the two other
#: axes, increasing order) becomes rows a, columns b.
_SLICE_AXES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}


def _slice_rotation(axis: int) -> np.ndarray:
    a, b = _SLICE_AXES[axis]
    ea, eb = np.eye(3)[a], np.eye(3)[b]
    return np.stack([eb, ea, np.cross(eb, ea)], axis=1)


class _ClientLoop:
    """One browser's render loop: asks its :class:`Progressive` what to draw and sends it as the
    scene's background image."""

    def __init__(self, client, render: Callable[[ViewCamera, str], np.ndarray], lock: threading.Lock,
                 on_frame: Callable[[int, Ticket, ViewCamera, np.ndarray], None], settle: float):
        self.client, self.render, self.lock, self.on_frame = client, render, lock, on_frame
        self.progressive = Progressive(settle)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"gridfield-view-{client.client_id}", daemon=True)

    def camera(self) -> ViewCamera | None:
        """The browser's camera now, None until it has reported one (and its canvas size)."""
        cam = self.client.camera
        try:
            w, h, fov = cam.image_width, cam.image_height, float(cam.fov)
            position, wxyz = tuple(map(float, cam.position)), tuple(map(float, cam.wxyz))
        except AssertionError:  # viser: no camera message from this browser yet
            return None
        if not (w and h and fov > 0):
            return None
        return ViewCamera(position, wxyz, fov, w / h)

    def _run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            ticket = self.progressive.next(now)
            cam = self.camera() if ticket is not None else None
            if ticket is None or cam is None:
                self.wake.wait(max(0.01, min(0.2, self.progressive.settled_at() - now)))
                self.wake.clear()
                continue
            try:
                with self.lock:
                    img = self.render(cam, ticket.quality)
            except Exception as e:  # noqa: BLE001 - one line, and the viewer keeps serving
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                print(f"gridfield view: cannot render this view: {why}", file=sys.stderr, flush=True)
                self.progressive.done(ticket)
                continue
            if self.stop.is_set():
                break
            fmt = "png" if ticket.quality == FULL else "jpeg"
            self.client.scene.set_background_image(img, format=fmt)
            self.progressive.done(ticket)
            self.on_frame(self.client.client_id, ticket, cam, img)

    def moved(self) -> None:
        self.progressive.moved(time.monotonic())
        self.wake.set()

    def changed(self) -> None:
        self.progressive.changed()
        self.wake.set()


class Viewer:
    """A running viewer of ``scene`` on ``host:port``; :meth:`stop` ends it.

    ``last_frames[client_id]`` holds ``(ticket, camera, picture)`` of the last picture sent to each
    browser (what tests compare against the tasks' renderers).
    """

    def __init__(self, scene: ImageScene | SDFScene | NerfScene, host: str, port: int, resolution: int = 512,
                 settle: float = 0.25, label: str | None = None):
        self.scene, self.settle = scene, settle
        self.lock = threading.Lock()
        self.loops: dict[int, _ClientLoop] = {}
        self.last_frames: dict[int, tuple[Ticket, ViewCamera, np.ndarray]] = {}
        self.frame_log: list[tuple[int, str, tuple[int, int]]] = []  # (client, quality, picture size) per frame sent
        self.frustums: list = []  # NeRF: the training cameras' frustum handles
        self.controls: dict[str, object] = {}  # GUI handles by name (setting .value works like the browser)
        self.sdf_handles: dict[str, object] = {}  # SDF: the mesh and slice scene objects
        self.frame_shown = threading.Condition()
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints its own banner; the command prints the address
            self.server = viser.ViserServer(host=host, port=port, label=label, verbose=False)
        self.host, self.port = host, self.server.get_port()
        self.server.scene.world_axes.visible = False
        self.server.gui.configure_theme(control_width="medium", show_share_button=False)
        self.render: Callable[[ViewCamera, str], np.ndarray] | None = None
        self.aspect_only = False  # image views depend on the canvas shape, not on the camera pose
        if isinstance(scene, NerfScene):
            self._setup_nerf(scene, resolution)
        elif isinstance(scene, ImageScene):
            self._setup_image(scene, resolution)
        else:
            self._setup_sdf(scene)
        if self.render is not None:  # compile any fast path now, not in a browser's render thread
            self.render(self._start_camera(scene), "preview")
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    def _start_camera(self, scene) -> ViewCamera:
        """The camera a browser starts with (for the warm-up render)."""
        eye = torch.tensor(np.asarray(self.server.initial_camera.position, dtype=np.float64))[None]
        wxyz, pos = frustum_pose(look_at(eye)[0].numpy())
        fov = vertical_fov(scene.K) if isinstance(scene, NerfScene) and scene.K is not None else 0.7
        return ViewCamera(tuple(pos), tuple(wxyz), fov, 16 / 9)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    # -- clients -----------------------------------------------------------------------------------
    def _connect(self, client) -> None:
        if self.render is None:
            return
        loop = _ClientLoop(client, self.render, self.lock, self._shown, self.settle)
        self.loops[client.client_id] = loop
        last_aspect = [None]

        def on_camera(cam) -> None:
            if not self.aspect_only:
                loop.moved()
            elif cam.image_width and cam.image_height and cam.image_width / cam.image_height != last_aspect[0]:
                last_aspect[0] = cam.image_width / cam.image_height
                loop.changed()

        client.camera.on_update(on_camera)
        loop.thread.start()
        loop.changed()

    def _disconnect(self, client) -> None:
        loop = self.loops.pop(client.client_id, None)
        if loop is not None:
            loop.stop.set()
            loop.wake.set()

    def _shown(self, client_id: int, ticket: Ticket, cam: ViewCamera, img: np.ndarray) -> None:
        with self.frame_shown:
            self.last_frames[client_id] = (ticket, cam, img)
            self.frame_log.append((client_id, ticket.quality, img.shape[:2]))
            del self.frame_log[:-1000]
            self.frame_shown.notify_all()

    def _refresh(self, _=None) -> None:
        for loop in list(self.loops.values()):
            loop.changed()

    def settled_frame(self, timeout: float = 60.0, quiet: float = 1.0):
        """Block until the last picture sent is a full-quality one and nothing was sent for ``quiet``
        seconds; returns ``(client_id, ticket, camera, picture)``, or None after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        with self.frame_shown:
            while time.monotonic() < end:
                n = len(self.frame_log)
                self.frame_shown.wait(min(quiet, max(0.0, end - time.monotonic())))
                if len(self.frame_log) == n and n and self.frame_log[-1][1] == FULL:
                    cid = self.frame_log[-1][0]
                    return (cid, *self.last_frames[cid])
        return None

    def stop(self) -> None:
        """Stop every render loop and the server."""
        for loop in list(self.loops.values()):
            loop.stop.set()
            loop.wake.set()
        for loop in list(self.loops.values()):
            loop.thread.join(timeout=10)
        with contextlib.redirect_stdout(io.StringIO()):
            self.server.stop()

    # -- scenes ------------------------------------------------------------------------------------
    def _setup_nerf(self, scene: NerfScene, resolution: int) -> None:
        gui, srv = self.server.gui, self.server
        srv.scene.set_up_direction("+z")
        srv.initial_camera.position = tuple(np.asarray(scene.center) + orbit_position(scene.radius, scene.elevation))
        srv.initial_camera.look_at = scene.center
        srv.initial_camera.up = (0.0, 0.0, 1.0)
        if scene.K is not None:
            srv.initial_camera.fov = vertical_fov(scene.K)
        gui.add_markdown("**NeRF** checkpoint: drag to orbit; the picture sharpens when the camera stops.")
        mode = gui.add_dropdown("Output", ("rgb", "depth"), initial_value="rgb")
        res = gui.add_slider("Resolution", min=32, max=2048, step=16, initial_value=_snap(resolution, 32, 2048, 16),
                             hint="width in pixels of the full-quality render")
        mode.on_update(self._refresh)
        res.on_update(self._refresh)
        self.controls.update(output=mode, resolution=res)
        frustums = self.frustums
        if scene.train_c2w is not None and scene.K is not None:
            show = self.controls["training_cameras"] = gui.add_checkbox("Training cameras", True)
            fov, aspect = vertical_fov(scene.K), scene.K.width / scene.K.height
            for i, c2w in enumerate(scene.train_c2w.numpy()):
                wxyz, pos = frustum_pose(c2w)
                frustums.append(srv.scene.add_camera_frustum(
                    f"/training_cameras/{i:03d}", fov=fov, aspect=aspect, scale=0.06 * scene.radius,
                    thickness=0.004 * scene.radius, color=(255, 140, 0), wxyz=wxyz, position=pos))

            @show.on_update
            def _(_) -> None:
                for f in frustums:
                    f.visible = show.value
        else:
            gui.add_markdown("_This checkpoint stores no training poses (written before they were saved): "
                             "no camera frustums._")

        def render(cam: ViewCamera, quality: str) -> np.ndarray:
            width = res.value if quality == FULL else max(16, res.value // PREVIEW_DIVISOR)
            return frames.nerf_frame(scene.field, scene.occupancy, scene.settings, cam.c2w(), cam.intrinsics(width),
                                     mode.value)

        self.render = render

    def _setup_image(self, scene: ImageScene, resolution: int) -> None:
        gui = self.server.gui
        H0, W0, C = scene.shape
        gui.add_markdown(f"**Image** checkpoint, fitted at {W0} x {H0} ({C} channel{'s' if C > 1 else ''}).")
        zoom = gui.add_slider("Zoom", min=0.25, max=64.0, step=0.25, initial_value=1.0)
        cx = gui.add_slider("Centre x", min=-1.0, max=1.0, step=0.005, initial_value=0.0)
        cy = gui.add_slider("Centre y", min=-1.0, max=1.0, step=0.005, initial_value=0.0)
        res = gui.add_slider("Resolution", min=32, max=4096, step=16, initial_value=_snap(resolution, 32, 4096, 16),
                             hint="width in pixels of the render")
        reset = gui.add_button("Reset view")
        for h in (zoom, cx, cy, res):
            h.on_update(self._refresh)
        self.controls.update(zoom=zoom, center_x=cx, center_y=cy, resolution=res)

        @reset.on_click
        def _(_) -> None:
            zoom.value, cx.value, cy.value = 1.0, 0.0, 0.0

        def render(cam: ViewCamera, quality: str) -> np.ndarray:
            width = res.value if quality == FULL else max(16, res.value // PREVIEW_DIVISOR)
            height = max(2, round(width / cam.aspect))
            return frames.image_frame(scene.field, scene.shape, width, height, (cx.value, cy.value), zoom.value)

        self.render, self.aspect_only = render, True

    def _setup_sdf(self, scene: SDFScene) -> None:
        gui, srv = self.server.gui, self.server
        srv.scene.set_up_direction("+z")
        srv.initial_camera.position = (2.2, 2.2, 1.6)
        srv.initial_camera.look_at = (0.0, 0.0, 0.0)
        srv.initial_camera.up = (0.0, 0.0, 1.0)
        gui.add_markdown("**SDF** checkpoint (unit frame): the zero level set and a slice of the distance "
                         "(blue inside, red outside, black on the surface).")
        mesh_res = gui.add_slider("Mesh resolution", min=16, max=512, step=16, initial_value=128)
        show_mesh = gui.add_checkbox("Mesh", True)
        axis = gui.add_dropdown("Slice axis", ("x", "y", "z"), initial_value="z")
        coord = gui.add_slider("Slice position", min=-1.0, max=1.0, step=0.01, initial_value=0.0)
        slice_res = gui.add_slider("Slice resolution", min=32, max=1024, step=32, initial_value=256)
        show_slice = gui.add_checkbox("Slice", True)
        self.controls.update(mesh_resolution=mesh_res, mesh=show_mesh, slice_axis=axis, slice_position=coord,
                             slice_resolution=slice_res, slice=show_slice)
        handles = self.sdf_handles

        def update_mesh(_=None) -> None:
            with self.lock:
                v, f = frames.sdf_mesh(scene.field, mesh_res.value)
            if "mesh" in handles:
                handles.pop("mesh").remove()
            if len(f):
                handles["mesh"] = srv.scene.add_mesh_simple("/sdf/mesh", v, f, color=(200, 200, 210),
                                                            side="double", visible=show_mesh.value)

        def update_slice(_=None) -> None:
            k = "xyz".index(axis.value)
            with self.lock:
                values = frames.sdf_slice(scene.field, k, coord.value, slice_res.value)
            pos = np.zeros(3)
            pos[k] = coord.value
            handles["slice"] = srv.scene.add_image(
                "/sdf/slice", frames.slice_colors(values), 2.0, 2.0, format="png",
                wxyz=matrix_to_quat(_slice_rotation(k)), position=pos, visible=show_slice.value)

        mesh_res.on_update(update_mesh)
        for h in (axis, coord, slice_res):
            h.on_update(update_slice)

        @show_mesh.on_update
        def _(_) -> None:
            if "mesh" in handles:
                handles["mesh"].visible = show_mesh.value

        @show_slice.on_update
        def _(_) -> None:
            if "slice" in handles:
                handles["slice"].visible = show_slice.value

        update_mesh()
        update_slice()


def _snap(value: int, lo: int, hi: int, step: int) -> int:
    return int(min(hi, max(lo, round(value / step) * step)))
