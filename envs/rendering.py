"""Offscreen rendering of a MuJoCo scene from a fixed camera, with render-only styling.

Styling (colours, drawn thickness) touches only the visual scene, never the model, so the
physics of a styled task is exactly Gymnasium's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from wm_sim.errors import WmSimError


@dataclass(frozen=True)
class CameraSpec:
    """A free camera looking at `lookat` from `distance`, and how to draw each named geom."""

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float
    elevation: float
    # geom name -> RGBA drawn instead of the model's colour
    colours: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    # geom name -> factor applied to the drawn size (thin links become visible at 64x64)
    thickness: dict[str, float] = field(default_factory=dict)
    # geom names not drawn at all
    hidden: tuple[str, ...] = ()
    # the camera's headlight (ambient, diffuse): flat, bright light keeps colours legible
    headlight: tuple[float, float] = (0.5, 0.5)


def metres_per_pixel(spec: CameraSpec, fovy_degrees: float, image_size: int, height: float = 0.0) -> float:
    """What one pixel spans, in metres, on a plane `height` above the lookat point, for a camera
    looking straight down (elevation -90) with vertical field of view `fovy_degrees`: the plane
    spans 2 d tan(fovy / 2) over the image, d its distance from the camera."""
    return 2.0 * (spec.distance - height) * float(np.tan(np.radians(fovy_degrees) / 2)) / image_size


class OffscreenCamera:
    """Renders (H, W, 3) uint8 frames of `model`/`data` from one CameraSpec."""

    def __init__(self, model: mujoco.MjModel, image_size: int, spec: CameraSpec):
        self._model = model
        self._headlight = spec.headlight
        try:
            self._renderer = mujoco.Renderer(model, height=image_size, width=image_size)
        except Exception as exc:  # the GL backends raise assorted types; re-raise as one clear line
            raise WmSimError(
                f"offscreen MuJoCo rendering failed with MUJOCO_GL={_gl_backend()!r} ({exc}); "
                "install the EGL libraries (Debian: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) "
                "or set MUJOCO_GL=osmesa"
            ) from exc
        # Shadow maps (4096^2) and reflections cost ~10x the frame itself on a software renderer,
        # and at 64x64 they only add clutter.
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            self._renderer.scene.flags[flag] = False
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self._camera.lookat[:] = spec.lookat
        self._camera.distance = spec.distance
        self._camera.azimuth = spec.azimuth
        self._camera.elevation = spec.elevation
        self._styles = _resolve_styles(model, spec)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """The current frame; `data` must be forward-computed (mj_forward) for fresh positions."""
        # The headlight lives in the model, which every camera of a task shares: set it per frame.
        # model.vis only affects drawing, never the dynamics.
        self._model.vis.headlight.ambient[:] = self._headlight[0]
        self._model.vis.headlight.diffuse[:] = self._headlight[1]
        self._renderer.update_scene(data, camera=self._camera)
        scene = self._renderer.scene
        for i in range(scene.ngeom):
            geom = scene.geoms[i]
            if geom.objtype != mujoco.mjtObj.mjOBJ_GEOM or geom.objid not in self._styles:
                continue
            rgba, scale = self._styles[geom.objid]
            if rgba is not None:
                geom.rgba[:] = rgba
            if scale != 1.0:
                geom.size[:2] *= scale  # radius (and half-width): the drawn thickness
        return self._renderer.render().copy()

    def close(self) -> None:
        self._renderer.close()


def _resolve_styles(model: mujoco.MjModel, spec: CameraSpec) -> dict[int, tuple[np.ndarray | None, float]]:
    names = set(spec.colours) | set(spec.thickness) | set(spec.hidden)
    styles: dict[int, tuple[np.ndarray | None, float]] = {}
    for name in names:
        geom_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)
        if geom_id < 0:
            raise ValueError(f"camera style names geom {name!r}, which the model does not have")
        rgba = np.asarray(spec.colours[name], np.float32) if name in spec.colours else None
        if name in spec.hidden:
            rgba = np.zeros(4, np.float32)
        styles[geom_id] = (rgba, spec.thickness.get(name, 1.0))
    return styles


def _gl_backend() -> str:
    import os

    return os.environ.get("MUJOCO_GL", "<unset>")
