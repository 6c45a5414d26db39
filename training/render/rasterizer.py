"""Headless OpenGL rasterizer (moderngl, EGL): Mesa llvmpipe on CPU, the NVIDIA driver on a GPU.

One context per process (``Rasterizer.shared()``); meshes keep their buffers on the GL side and only
the per-render positions/normals are re-uploaded, so batches of renders reuse everything.
Anti-aliasing is supersampling: render at ``supersample`` x the size and box-filter down, which also
yields a fractional coverage (alpha) for compositing over a background.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import moderngl
import numpy as np

log = logging.getLogger(__name__)

SHADERS = Path(__file__).parent / "shaders"
NEAR_FAR = (1.0, 1000.0)  # cm


@dataclass
class Shading:
    """Light in camera space (unit vectors); colours are linear RGB."""

    light_dir: tuple[float, float, float] = (0.3, -0.4, -0.85)
    light_color: tuple[float, float, float] = (0.8, 0.8, 0.8)
    sky_color: tuple[float, float, float] = (0.45, 0.45, 0.45)
    ground_color: tuple[float, float, float] = (0.25, 0.23, 0.22)
    up_dir: tuple[float, float, float] = (0.0, -1.0, 0.0)
    wrap: float = 0.35
    specular: float = 0.25
    gloss: float = 24.0
    subsurface: float = 1.0  # red-channel light bleed past the terminator (skin), 0 = plain wrap
    hair_sheen: float = 0.35  # strength of the broad highlight on hair


@dataclass
class Raster:
    color: np.ndarray  # (H,W,3) f32 in [0,1], premultiplied by alpha (sRGB values)
    alpha: np.ndarray  # (H,W) f32 coverage
    depth: np.ndarray  # (H,W) f32 camera z (cm), inf where nothing was drawn


def _intrinsics(K: np.ndarray, scale: float) -> tuple[float, float, float, float]:
    if abs(K[0, 1]) > 1e-9:
        raise ValueError("camera K has a skew term; the rasterizer supports zero skew only")
    return (K[0, 0] * scale, K[1, 1] * scale, (K[0, 2] + 0.5) * scale, (K[1, 2] + 0.5) * scale)


def _static_attributes(uv, albedo, material, hair=None) -> bytes:
    """Packs per-corner static attributes: uv (2), albedo (3), material (4), hair (3).

    ``material`` columns: skin texture weight, specular weight, ambient occlusion (1 = open),
    alpha (1 = opaque); missing trailing columns default to (0, 0, 1, 1). ``hair`` columns: hair
    texture u, v and hair weight (default 0: no hair)."""
    n = len(uv)
    mat = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (n, 1))
    material = np.asarray(material, np.float32).reshape(n, -1)
    mat[:, : material.shape[1]] = material
    hair = np.zeros((n, 3), np.float32) if hair is None else np.asarray(hair, np.float32)
    return np.hstack([uv, albedo, mat, hair]).astype("f4").tobytes()


class GLMesh:
    """A triangle mesh with per-corner static attributes, uploaded once.

    ``uv`` (C,2), ``albedo`` (C,3) linear RGB, ``material`` (C,2..4) = (skin texture weight,
    specular weight[, ambient occlusion, alpha]), optional ``hair`` (C,3) = (hair texture u, v,
    weight), ``indices`` (F,3) into the C corners. Positions/normals come with every draw.
    """

    def __init__(self, raster: Rasterizer, uv, albedo, material, indices, hair=None):
        ctx = raster.ctx
        self.num_corners = len(uv)
        self.vbo_static = ctx.buffer(_static_attributes(uv, albedo, material, hair))
        self.vbo_dynamic = ctx.buffer(reserve=self.num_corners * 6 * 4)
        self.ibo = ctx.buffer(np.ascontiguousarray(indices, dtype="i4").tobytes())
        self.vao_shade = ctx.vertex_array(
            raster.shade,
            [(self.vbo_dynamic, "3f 3f", "in_pos", "in_normal"),
             (self.vbo_static, "2f 3f 4f 3f", "in_uv", "in_albedo", "in_mat", "in_hair")],
            self.ibo,
        )
        self._raster = raster
        self._vao_bake = None

    def set_albedo(self, uv, albedo, material, hair=None) -> None:
        self.vbo_static.write(_static_attributes(uv, albedo, material, hair))

    def set_geometry(self, positions: np.ndarray, normals: np.ndarray) -> None:
        self.vbo_dynamic.write(np.hstack([positions, normals]).astype("f4").tobytes())

    def vao_bake(self):
        if self._vao_bake is None:
            self._vao_bake = self._raster.ctx.vertex_array(
                self._raster.bake,
                [(self.vbo_dynamic, "3f 3f", "in_pos", "in_normal"), (self.vbo_static, "2f 1f 36x", "in_uv", "in_allow")],
                self.ibo,
            )
        return self._vao_bake

    def release(self) -> None:
        for obj in (self._vao_bake, self.vao_shade, self.vbo_static, self.vbo_dynamic, self.ibo):
            if obj is not None:
                obj.release()


class Rasterizer:
    _shared: Rasterizer | None = None
    _lock = threading.Lock()

    def __init__(self, supersample: int = 2):
        try:
            self.ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as e:  # noqa: BLE001 - name the missing system piece
            raise RuntimeError(
                f"cannot create a headless OpenGL (EGL) context: {e}. Install Mesa EGL "
                "(apt: libegl1 libgl1-mesa-dri) or an NVIDIA driver with EGL."
            ) from e
        self.supersample = supersample
        self.renderer = self.ctx.info.get("GL_RENDERER", "?")
        log.info("OpenGL renderer: %s", self.renderer)
        self.shade = self.ctx.program(
            vertex_shader=(SHADERS / "shade.vert").read_text(), fragment_shader=(SHADERS / "shade.frag").read_text()
        )
        self.bake = self.ctx.program(
            vertex_shader=(SHADERS / "bake.vert").read_text(), fragment_shader=(SHADERS / "bake.frag").read_text()
        )
        self._fbos: dict[tuple, moderngl.Framebuffer] = {}
        self._textures: dict[str, tuple[object, moderngl.Texture]] = {}

    @classmethod
    def shared(cls) -> Rasterizer:
        """The process-wide rasterizer (a GL context is costly; reuse it)."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def mesh(self, uv, albedo, material, indices, hair=None) -> GLMesh:
        return GLMesh(self, uv, albedo, material, indices, hair)

    # -- textures -------------------------------------------------------------------------------
    def texture(self, slot: str, image: np.ndarray, key: object = None, mipmaps: bool = True) -> moderngl.Texture:
        """Uploads ``image`` (H,W,C uint8 or f32) into a named slot; skipped when ``key`` is unchanged."""
        cached = self._textures.get(slot)
        if cached is not None and key is not None and cached[0] == key:
            return cached[1]
        image = np.ascontiguousarray(image)
        h, w = image.shape[:2]
        comps = 1 if image.ndim == 2 else image.shape[2]
        dtype = "f4" if image.dtype == np.float32 else "f1"
        if cached is not None and cached[1].size == (w, h) and cached[1].components == comps and cached[1].dtype == dtype:
            tex = cached[1]
            tex.write(image.tobytes())
        else:
            if cached is not None:
                cached[1].release()
            tex = self.ctx.texture((w, h), comps, image.tobytes(), dtype=dtype)
        tex.repeat_x = tex.repeat_y = False
        if mipmaps and dtype == "f1":
            tex.build_mipmaps()
            tex.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
            tex.anisotropy = 4.0
        else:
            tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
        self._textures[slot] = (key, tex)
        return tex

    def _fbo(self, kind: str, w: int, h: int) -> moderngl.Framebuffer:
        key = (kind, w, h)
        if key not in self._fbos:
            if kind == "shade":
                attachments = [self.ctx.texture((w, h), 4, dtype="f1"), self.ctx.texture((w, h), 1, dtype="f4")]
                self._fbos[key] = self.ctx.framebuffer(attachments, self.ctx.depth_renderbuffer((w, h)))
            else:
                self._fbos[key] = self.ctx.framebuffer([self.ctx.texture((w, h), 4, dtype="f4")])
        return self._fbos[key]

    # -- drawing --------------------------------------------------------------------------------
    def draw(
        self,
        mesh: GLMesh,
        K: np.ndarray,
        width: int,
        height: int,
        skin: np.ndarray,
        skin_key: object = None,
        shading: Shading | None = None,
        supersample: int | None = None,
        hair: np.ndarray | None = None,
        hair_key: object = None,
    ) -> Raster:
        """Renders ``mesh`` (geometry already set, camera space) through the pinhole ``K``.

        ``skin`` is the sRGB texture sampled at the corners' uv, ``hair`` (sRGB, optional) the one sampled
        at their hair coordinates."""
        ss = self.supersample if supersample is None else supersample
        W, H = width * ss, height * ss
        s = shading or Shading()
        prog = self.shade
        prog["intr"].value = _intrinsics(K, ss)
        prog["size"].value = (W, H)
        prog["near_far"].value = NEAR_FAR
        for name in ("light_dir", "light_color", "sky_color", "ground_color", "up_dir", "wrap", "specular", "gloss",
                     "subsurface", "hair_sheen"):
            if name in prog:
                prog[name].value = getattr(s, name)
        self.texture("skin", skin, key=skin_key).use(0)
        prog["skin"].value = 0
        if hair is None:
            hair, hair_key = np.zeros((1, 1, 3), np.uint8), "none"
        hair_tex = self.texture("hair", hair, key=hair_key)
        hair_tex.repeat_x = True  # the hair map wraps around the head
        hair_tex.use(1)
        prog["hair"].value = 1
        fbo = self._fbo("shade", W, H)
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0)
        fbo.color_attachments[1].write(np.full((H, W), np.inf, dtype="f4").tobytes())
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.ctx.disable(moderngl.CULL_FACE)
        mesh.vao_shade.render(moderngl.TRIANGLES)
        rgba = np.frombuffer(fbo.read(components=4, attachment=0), np.uint8).reshape(H, W, 4)
        z = np.frombuffer(fbo.read(components=1, attachment=1, dtype="f4"), np.float32).reshape(H, W)
        rgba = rgba.astype(np.float32) / 255.0
        if ss > 1:
            rgba = rgba.reshape(height, ss, width, ss, 4).mean(axis=(1, 3))
            z = z.reshape(height, ss, width, ss).min(axis=(1, 3))
        return Raster(color=rgba[..., :3], alpha=rgba[..., 3], depth=z)

    def bake_uv(
        self,
        mesh: GLMesh,
        photo: np.ndarray,
        photo_depth: np.ndarray,
        K: np.ndarray,
        size: int,
        facing_range: tuple[float, float] = (0.35, 0.75),
        depth_tolerance: float = 0.3,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Projects ``photo`` onto the mesh's UV layout: (size,size,3) f32 colour and (size,size) weight.

        The mesh's geometry must be the fitted one, in the photo's camera space. Row 0 is v = 0.
        """
        prog = self.bake
        h, w = photo.shape[:2]
        prog["intr"].value = _intrinsics(K, 1.0)
        prog["size"].value = (w, h)
        prog["facing_range"].value = facing_range
        prog["depth_tolerance"].value = depth_tolerance
        self.texture("photo", photo, mipmaps=False).use(0)
        self.texture("photo_depth", photo_depth.astype(np.float32), mipmaps=False).use(1)
        prog["photo"].value = 0
        prog["photo_depth"].value = 1
        fbo = self._fbo("bake", size, size)
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0)
        self.ctx.disable(moderngl.DEPTH_TEST)
        self.ctx.disable(moderngl.CULL_FACE)
        mesh.vao_bake().render(moderngl.TRIANGLES)
        out = np.frombuffer(fbo.read(components=4, dtype="f4"), np.float32).reshape(size, size, 4)
        wsum = out[..., 3]
        colour = out[..., :3] / np.maximum(wsum, 1e-6)[..., None]
        return colour, wsum  # a uint8 photo samples as [0,1] already
