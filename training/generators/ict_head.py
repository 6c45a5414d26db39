"""The embedded generator: a textured ICT FaceKit morphable head rendered headless (docs/generator.md).

Geometry: ICT identity weights ~ N(0, scale) and a sparse, plausible mix of the 53 expressions.
Appearance: a UV skin texture taken from real video frames (training/textures.py), varied in tone,
colour and make-up; procedural eyes; teeth, gums and sockets in material colours; scalp hair from a
strand map with some volume; clothing at the neck and a soft fade of the neck's cut; skin-like
shading with ambient occlusion; a real-frame or procedural background; blur, noise and JPEG.
Units are centimetres and the head frame is ICT's (engine/geometry.py).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from training.generators import appearance as ap
from training.generators.base import Camera, Identity, Render
from training.generators.ict_model import ICTModel, load_ict_model, vertex_normals
from training.render import Rasterizer, Shading
from training.render.occlusion import vertex_ambient_occlusion

log = logging.getLogger(__name__)

# (expression names, weight range) groups; an identity draws a few of them (see _sample_expression).
EXPRESSION_PRESETS: dict[str, tuple[tuple[str, ...], tuple[float, float]]] = {
    "smile": (("mouthSmile_L", "mouthSmile_R", "cheekSquint_L", "cheekSquint_R"), (0.2, 0.9)),
    "open": (("jawOpen", "mouthLowerDown_L", "mouthLowerDown_R"), (0.1, 0.7)),
    "talk": (("jawOpen", "mouthFunnel", "mouthUpperUp_L", "mouthUpperUp_R"), (0.05, 0.35)),
    "blink": (("eyeBlink_L", "eyeBlink_R"), (0.3, 1.0)),
    "wink_l": (("eyeBlink_L", "eyeSquint_L"), (0.5, 1.0)),
    "wink_r": (("eyeBlink_R", "eyeSquint_R"), (0.5, 1.0)),
    "brows_up": (("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R", "eyeWide_L", "eyeWide_R"), (0.2, 0.9)),
    "frown": (("browDown_L", "browDown_R", "mouthFrown_L", "mouthFrown_R", "noseSneer_L", "noseSneer_R"), (0.2, 0.8)),
    "pucker": (("mouthPucker", "mouthFunnel"), (0.2, 0.8)),
    "press": (("mouthPress_L", "mouthPress_R", "mouthRollLower", "mouthShrugUpper"), (0.2, 0.7)),
    "stretch": (("mouthStretch_L", "mouthStretch_R", "jawOpen"), (0.1, 0.5)),
    "jaw_side": (("jawLeft", "mouthLeft"), (0.1, 0.5)),
    "jaw_side_r": (("jawRight", "mouthRight"), (0.1, 0.5)),
    "gaze": (("eyeLookUp_L", "eyeLookUp_R"), (0.0, 0.0)),  # weights set in _sample_expression
    "puff": (("cheekPuff_L", "cheekPuff_R"), (0.2, 0.8)),
    "dimple": (("mouthDimple_L", "mouthDimple_R", "mouthSmile_L"), (0.2, 0.6)),
}
PRESET_PROBS = {"smile": 0.2, "open": 0.12, "talk": 0.12, "blink": 0.06, "wink_l": 0.02, "wink_r": 0.02,
                "brows_up": 0.08, "frown": 0.05, "pucker": 0.05, "press": 0.05, "stretch": 0.04,
                "jaw_side": 0.02, "jaw_side_r": 0.02, "gaze": 0.08, "puff": 0.02, "dimple": 0.05}

# Material albedos (linear RGB).
SCLERA = np.array([0.62, 0.57, 0.52])
TEETH = np.array([0.62, 0.56, 0.44])
GUMS = np.array([0.40, 0.09, 0.09])
MOUTH_SOCKET = np.array([0.10, 0.025, 0.02])
EYE_SOCKET = np.array([0.04, 0.02, 0.018])
IRIS_HALF_ANGLE = 0.5  # rad: an 11.7 mm iris on a 12 mm-radius eyeball
HAIR_CENTRE = np.array([0.0, 2.0, 1.0])  # cm, head frame: centre of the hair map's sphere
NECK_BOTTOM_CM = -19.3  # lowest neutral vertex: the cut edge of the neck
DEFAULT_LOOK = {"hair_thickness_cm": 0.5, "collar_cm": None, "collar_dip_cm": 0.0, "cloth_colour": [0.1, 0.1, 0.1],
                "neck_fade_cm": 4.0, "subsurface": 1.0, "hair_sheen": 0.3}
TEXTURED_AO = 0.35  # photo textures already carry their creases' shading: apply AO only partly


@dataclass
class _Layout:
    """Per-corner (vertex, uv) layout of the drawn triangles: UV seams need separate corners."""

    corner_vertex: np.ndarray  # (C,)
    corner_uv: np.ndarray  # (C,2) tile-local
    corner_material: np.ndarray  # (C,) material index
    indices: np.ndarray  # (F,3) into corners
    hair_height: np.ndarray  # (V,) signed cm above the neutral hairline (shifted per identity)
    hair_uv: np.ndarray  # (V,2) hair map coordinates: azimuth around the head, angle from the crown
    neck_y: np.ndarray  # (V,) neutral height (cm), for the collar and the fade of the neck's cut
    hair_allow: np.ndarray  # (V,) 0 on the ears (hair goes behind them), 1 elsewhere


def _build_layout(model: ICTModel) -> _Layout:
    keep = model.drawn_triangles()
    tri, uvt = model.triangles[keep], model.uv_triangles[keep]
    key = tri.astype(np.int64) * len(model.uv) + uvt
    uniq, inverse = np.unique(key.ravel(), return_inverse=True)
    corner_vertex = (uniq // len(model.uv)).astype(np.int64)
    uv_index = uniq % len(model.uv)
    uv = model.uv[uv_index]
    uv = uv - np.floor(np.minimum(uv, np.float32(6.999)))  # tile-local: u in [0,1)
    mat = np.zeros(len(uniq), np.int64)
    mat[inverse] = np.repeat(model.triangle_material[keep], 3)
    # Hairline height as a function of depth z: forehead, temples, above the ears, nape (cm).
    v = model.neutral
    line = np.interp(v[:, 2], [-6.0, -2.0, 1.5, 5.0, 8.0], [-9.5, -4.0, 5.5, 9.0, 10.8])
    h = v[:, 1] - line
    # Strands run from the crown down: u = azimuth around the vertical axis (seam at the back of the
    # head, never seen by the cameras), v = polar angle from the crown.
    d = v - HAIR_CENTRE
    hair_uv = np.stack([np.arctan2(d[:, 0], d[:, 2]) / (2 * np.pi) + 0.5,
                        np.arccos(np.clip(d[:, 1] / np.linalg.norm(d, axis=1), -1, 1)) / np.pi], axis=1)
    ears = _smoothstep(7.0, 7.8, np.abs(v[:, 0])) * _smoothstep(7.5, 6.5, v[:, 1]) * _smoothstep(4.0, 3.0, np.abs(v[:, 2]))
    return _Layout(corner_vertex, uv, mat, inverse.reshape(-1, 3).astype(np.int32), h, hair_uv, v[:, 1].copy(), 1.0 - ears)


@functools.lru_cache(maxsize=1)
def _neutral_ao() -> np.ndarray:
    m = load_ict_model()
    keep = m.drawn_triangles()
    return vertex_ambient_occlusion(m.neutral, vertex_normals(m.neutral, m.triangles), m.triangles[keep]).astype(np.float32)


def _smoothstep(a, b, x):
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class ICTHeadGenerator:
    """``identity(seed)`` draws shape, expression and appearance; ``render(identity, camera)`` draws it."""

    name = "ict_head"

    def __init__(
        self,
        identity_scale: float = 1.0,
        augment: bool = True,
        supersample: int = 2,
        bank=None,
        texture_size: int | None = None,
    ):
        """``augment=False`` turns off background clutter, blur, noise and JPEG (clean renders).

        ``bank`` is a ``training.textures.TextureBank``; by default the cached bank (built on first use).
        """
        self.model = load_ict_model()
        self.layout = _build_layout(self.model)
        self.identity_scale = identity_scale
        self.augment = augment
        self.supersample = supersample
        if bank is None:
            from training.textures import TextureBank

            bank = TextureBank.load_or_build()
        self.bank = bank
        self.raster = Rasterizer.shared()
        lay = self.layout
        n = len(lay.corner_vertex)
        self._gl = self.raster.mesh(lay.corner_uv, np.zeros((n, 3)), np.zeros((n, 4)), lay.indices, hair=np.zeros((n, 3)))
        self._gl_identity: int | None = None
        self._geometry_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._skin_cache: tuple[int, np.ndarray] | None = None
        self._hair_cache: tuple[tuple, np.ndarray] | None = None
        self._drawn: tuple[np.ndarray, np.ndarray] | None = None
        m = self.model
        self._mat = {name: i for i, name in enumerate(m.material_names)}
        self._iris = [m.masks["iris_left"], m.masks["iris_right"]]

    # -- identities -------------------------------------------------------------------------------
    def identity(self, seed: int) -> Identity:
        rng = np.random.default_rng([int(seed), 0x1C7])
        hair = int(rng.choice(len(ap.HAIR_COLOURS), p=ap.HAIR_WEIGHTS))
        params = {
            "identity_weights": rng.normal(0.0, self.identity_scale, self.model.identity_basis.shape[0]),
            "expression_weights": self._sample_expression(rng),
            "texture": int(rng.integers(len(self.bank))),
            "skin": ap.sample_skin_variation(rng),
            "eye_colour": (ap.EYE_COLOURS[rng.choice(len(ap.EYE_COLOURS), p=ap.EYE_WEIGHTS)] * rng.uniform(0.7, 1.3)).tolist(),
            "hair_colour": (ap.HAIR_COLOURS[hair] * rng.uniform(0.7, 1.3)).tolist(),
            "hairline_shift_cm": float(rng.uniform(-1.5, 2.5)) if rng.random() > 0.1 else 40.0,  # 10% bald
            "light": ap.sample_light(rng),
            "background": {"photo": bool(rng.random() < 0.6), "seed": int(rng.integers(2**31))},
        }
        params["look"] = ap.sample_look(rng)  # drawn last: the draws above keep their values
        return Identity(seed=int(seed), params=params)

    def _sample_expression(self, rng: np.random.Generator) -> np.ndarray:
        w = np.zeros(len(self.model.expression_names))
        if rng.random() < 0.25:
            return w  # neutral
        names = list(PRESET_PROBS)
        p = np.array([PRESET_PROBS[n] for n in names])
        k = 1 + int(rng.random() < 0.35)
        for preset in rng.choice(names, size=k, replace=False, p=p / p.sum()):
            expr, (lo, hi) = EXPRESSION_PRESETS[preset]
            if preset == "gaze":  # look in one direction with both eyes
                horiz = rng.uniform(-0.7, 0.7)
                vert = rng.uniform(-0.5, 0.5)
                for side, sgn in (("L", 1), ("R", -1)):
                    out_in = ("eyeLookOut_", "eyeLookIn_") if horiz * sgn > 0 else ("eyeLookIn_", "eyeLookOut_")
                    w[self.model.expression_index(out_in[0] + side)] = abs(horiz)
                    w[self.model.expression_index(("eyeLookUp_" if vert > 0 else "eyeLookDown_") + side)] = abs(vert)
                continue
            level = rng.uniform(lo, hi)
            for name in expr:  # small per-shape jitter keeps the two sides slightly asymmetric
                i = self.model.expression_index(name)
                w[i] = np.clip(max(w[i], level * rng.uniform(0.8, 1.1)), 0.0, 1.0)
        return w

    # -- geometry ---------------------------------------------------------------------------------
    def geometry(self, identity: Identity) -> tuple[np.ndarray, np.ndarray]:
        """(V,3) vertices and (V,3) normals in the head frame (cached for the last identity)."""
        key = self._identity_key(identity)
        if self._geometry_cache is None or self._geometry_cache[0] != key:
            p = identity.params
            v = self.model.vertices(np.asarray(p["identity_weights"]), np.asarray(p["expression_weights"]))
            self._geometry_cache = (key, v, vertex_normals(v, self.model.triangles))
        return self._geometry_cache[1], self._geometry_cache[2]

    def _drawn_vertices(self, identity: Identity) -> tuple[np.ndarray, np.ndarray]:
        """Vertices and normals as drawn: the scalp pushed out along the normals by the hair's volume
        (landmarks, ``vertices_cam`` and the returned mesh stay the morphable model's own)."""
        v, n = self.geometry(identity)
        p = identity.params
        look = p.get("look", DEFAULT_LOOK)
        h = self.layout.hair_height - p["hairline_shift_cm"]
        disp = look["hair_thickness_cm"] * _smoothstep(-0.5, 4.5, h) * self.layout.hair_allow
        return v + n * disp[:, None].astype(np.float32), n

    @functools.cached_property
    def ao(self) -> np.ndarray:
        """(V,) ambient occlusion of the neutral head (computed once per process)."""
        return _neutral_ao()

    @staticmethod
    def _identity_key(identity: Identity) -> int:
        return hash((identity.seed, id(identity)))

    def _albedo(self, identity: Identity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-corner linear albedo, material (skin texture weight, specular weight, ambient
        occlusion, alpha) and hair (map u, v, coverage)."""
        p, lay, mat, m = identity.params, self.layout, self._mat, self.model
        v_head, _ = self.geometry(identity)
        cv, cm = lay.corner_vertex, lay.corner_material
        skin = ap.srgb_to_linear(np.asarray(self.bank.base_colours[p["texture"]]) * self._skin_gain(p))
        alb = np.tile(skin, (len(cv), 1))
        matw = np.zeros((len(cv), 4))
        matw[:, 3] = 1.0
        face = cm == mat["M_Face"]
        matw[face, :2] = (1.0, 1.0)
        back = cm == mat["M_BackHead"]
        matw[back, 1] = 0.6
        # Scalp hair: coverage above a shifted hairline; the shader blends in the strand map
        # (hair_map) where the coverage and the strands' own density say so.
        hair = np.zeros((len(cv), 3))
        hair[:, :2] = lay.hair_uv[cv]
        h = lay.hair_height[cv] - p["hairline_shift_cm"]
        hair[face | back, 2] = (_smoothstep(-0.6, 0.8, h) * lay.hair_allow[cv])[face | back]
        # Neck: clothing below a collar line (some identities), and the cut edge fades out.
        y = lay.neck_y[cv]
        look = p.get("look", DEFAULT_LOOK)
        if look["collar_cm"] is not None:
            z = self.model.neutral[cv, 2]
            collar = look["collar_cm"] + look["collar_dip_cm"] * _smoothstep(-2.0, 6.0, z)  # lower in front
            cloth = (1.0 - _smoothstep(collar - 0.25, collar + 0.25, y)) * (face | back)
            grain = np.random.default_rng(identity.seed + 7).uniform(0.85, 1.1, m.num_vertices)[cv]
            alb = alb * (1 - cloth[:, None]) + np.asarray(look["cloth_colour"]) * grain[:, None] * cloth[:, None]
            matw[:, 0] *= 1 - cloth
            matw[:, 1] = matw[:, 1] * (1 - cloth) + 0.15 * cloth
            hair[:, 2] *= 1 - cloth
        matw[:, 3] = _smoothstep(NECK_BOTTOM_CM + 0.2, NECK_BOTTOM_CM + look["neck_fade_cm"], y)
        # Ambient occlusion of the neutral mesh; textured skin already shows its creases' shading.
        ao = self.ao[cv]
        matw[:, 2] = ao ** (1.0 - (1.0 - TEXTURED_AO) * matw[:, 0])
        # Eyes: the sclera mesh also covers the cornea in front of the iris, so colour both meshes by
        # the angle from the gaze axis (eyeball centre -> iris centre): pupil, iris, limbal ring, white.
        for side, iris_mask in (("left", self._iris[0]), ("right", self._iris[1])):
            ball = m.masks[f"eyeball_{side}"]
            centre = v_head[ball].mean(axis=0)
            gaze = v_head[iris_mask].mean(axis=0) - centre
            gaze /= np.linalg.norm(gaze) + 1e-9
            iris_angle = IRIS_HALF_ANGLE
            sel = ball[cv] & ((cm == mat[f"M_Sclera{side.title()}"]) | (cm == mat[f"M_Iris{side.title()}"]))
            d = v_head[cv[sel]] - centre
            ang = np.arccos(np.clip((d @ gaze) / (np.linalg.norm(d, axis=1) + 1e-9), -1, 1)) / max(iris_angle, 1e-6)
            iris = np.asarray(p["eye_colour"]) * (0.75 + 0.5 * ang[:, None])
            iris = np.where(ang[:, None] < 0.42, 0.008, iris)
            iris = np.where(ang[:, None] > 0.88, iris * 0.35, iris)
            alb[sel] = np.where(ang[:, None] < 1.0, iris, SCLERA * (0.85 + 0.15 * _smoothstep(1.0, 1.6, ang))[:, None])
            matw[sel, :2] = (0.0, 2.5)
        # Mouth interior darkens with depth behind the lips; sockets are nearly black.
        depth_shade = np.clip((v_head[cv, 2] - 4.0) / 7.0, 0.12, 1.0)[:, None]
        teeth, gums = cm == mat["M_Teeth"], cm == mat["M_GumsTongue"]
        alb[teeth] = TEETH * depth_shade[teeth]
        matw[teeth, 1] = 1.0
        alb[gums] = GUMS * depth_shade[gums]
        matw[gums, 1] = 1.5
        # The sockets share the back-head tile: find them by their region masks.
        socket = m.masks["mouth_socket"][cv] & back
        alb[socket] = MOUTH_SOCKET
        matw[socket, :2] = 0.0
        eye_socket = (m.masks["eye_socket_left"] | m.masks["eye_socket_right"])[cv] & back
        alb[eye_socket] = EYE_SOCKET
        matw[eye_socket, :2] = 0.0
        return alb, matw, hair

    @staticmethod
    def _skin_gain(p: dict) -> np.ndarray:
        s = p["skin"]
        return s["gain"] * np.asarray(s["balance"])

    def skin_texture(self, identity: Identity) -> np.ndarray:
        """The identity's varied UV skin texture (sRGB uint8, row 0 = v = 0)."""
        if self._skin_cache is None or self._skin_cache[0] != self._identity_key(identity):
            p = identity.params
            tex = ap.vary_skin(self.bank.textures[p["texture"]], p["skin"], self.bank.brow_mask, self.bank.lip_mask)
            self._skin_cache = (self._identity_key(identity), tex)
        return self._skin_cache[1]

    # -- rendering --------------------------------------------------------------------------------
    def hair_map(self, identity: Identity) -> np.ndarray:
        """The identity's strand map (RGBA uint8: sRGB hair colour, strand density)."""
        key = ("hair", self._identity_key(identity))
        if self._hair_cache is None or self._hair_cache[0] != key:
            p = identity.params
            self._hair_cache = (key, ap.hair_map(np.random.default_rng([identity.seed, 0x4A1]), np.asarray(p["hair_colour"])))
        return self._hair_cache[1]

    # -- rendering --------------------------------------------------------------------------------
    def render(self, identity: Identity, camera: Camera) -> Render:
        p = identity.params
        v_head, n_head = self.geometry(identity)
        if self._gl_identity != self._identity_key(identity):
            self._gl.set_albedo(self.layout.corner_uv, *self._albedo(identity))
            self._drawn = self._drawn_vertices(identity)
            self._gl_identity = self._identity_key(identity)
        R, t = np.asarray(camera.R, np.float64), np.asarray(camera.t, np.float64)
        v_cam = v_head @ R.T + t
        cv = self.layout.corner_vertex
        v_draw, n_draw = self._drawn
        self._gl.set_geometry((v_draw @ R.T + t)[cv], (n_draw @ R.T)[cv])
        light = p["light"]
        look = p.get("look", DEFAULT_LOOK)
        shading = Shading(
            light_dir=tuple(R @ np.asarray(light["dir_head"])),
            light_color=tuple(light["key"]),
            sky_color=tuple(light["sky"]),
            ground_color=tuple(light["ground"]),
            up_dir=tuple(R @ np.array([0.0, 1.0, 0.0])),
            specular=light["specular"],
            gloss=light["gloss"],
            subsurface=look["subsurface"],
            hair_sheen=look["hair_sheen"],
        )
        skin = self.skin_texture(identity)
        key = self._identity_key(identity)
        r = self.raster.draw(self._gl, camera.K, camera.width, camera.height, skin,
                             skin_key=("skin", key), shading=shading, supersample=self.supersample,
                             hair=self.hair_map(identity), hair_key=("hair", key))
        # Per-render nuisances depend on the identity and the camera only: renders are reproducible.
        rng = np.random.default_rng([identity.seed, _camera_hash(camera)])
        bg = self._background(p["background"], rng, camera)
        image = r.color + (1.0 - r.alpha[..., None]) * bg
        art = ap.sample_artefacts(rng) if self.augment else {"blur": 0.0, "noise": 0.0, "jpeg": 0}
        image = ap.apply_artefacts(image, art, rng)
        lm = self.model.landmarks68
        return Render(
            image=image,
            camera=camera,
            landmarks_head=v_head[lm].astype(np.float64),
            landmarks_2d=camera.project(v_head[lm].astype(np.float64)),
            vertices_cam=v_cam.astype(np.float32),
            faces=self.model.triangles[self.model.drawn_triangles()],
            depth=r.depth,
            mask=r.alpha > 0.5,
        )

    def _background(self, spec: dict, rng: np.random.Generator, camera: Camera) -> np.ndarray:
        size = max(camera.width, camera.height)
        bg_rng = np.random.default_rng(spec["seed"])  # fixed per identity: the same room in every view
        if not self.augment:
            return np.full((camera.height, camera.width, 3), 0.5, np.float32) * bg_rng.uniform(0.6, 1.4)
        if spec["photo"] and len(self.bank.backgrounds):
            img = ap.photo_background(self.bank.backgrounds[bg_rng.integers(len(self.bank.backgrounds))], rng, size)
        else:
            img = ap.procedural_background(bg_rng, size)
        return img[: camera.height, : camera.width]


def _camera_hash(camera: Camera) -> int:
    data = np.concatenate([np.ravel(camera.K), np.ravel(camera.R), np.ravel(camera.t), [camera.width, camera.height]])
    return int.from_bytes(hashlib.blake2b(np.round(data, 6).tobytes(), digest_size=8).digest(), "little")
