"""UV skin textures from real video frames, and the texture bank the embedded generator draws from.

For a frame: detect the face (CenterFace), get 68 landmarks (the 3DDFA_V2 teacher), fit the ICT
morphable model to them (identity + expression weights, pose, perspective camera), and capture the
frame into the face's UV tile (moderngl): only texels well inside the fitted silhouette, facing the
camera, not hidden, and close to the frame's own skin colour (no hair, ear shadow, background or real
eyes mapped onto the lids). The frames of a clip are combined robustly, their low-frequency shading
divided out (the renderer lights the head), the hidden side filled from its mirror (the face UV layout
is symmetric about u = 0.5), the rest push-pull filled, and the tile's border feathered into the
skin's base colour so the back-of-head seam disappears. One texture per subject (clip).

    python -m training.textures build      # -> data/textures/bank.npz (also built on first use)
"""

from __future__ import annotations

import argparse
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from engine.assets import REPO_ROOT, shared_asset
from engine.geometry import FRONTAL
from training.generators.ict_model import ICTModel, load_ict_model, vertex_normals
from training.render import Rasterizer

log = logging.getLogger(__name__)

# Reserved for validating multi-frame data: never used for textures or backgrounds.
HELD_OUT_CLIPS = ("liveportrait_d19.mp4", "pyfeat_single_face.mp4")
# Subjects wear glasses in these (videos/README.md): textures must be glasses-free, so they only
# contribute background patches.
GLASSES_CLIPS = ("liveportrait_d9.mp4", "liveportrait_d12.mp4")
BANK_PATH = REPO_ROOT / "data" / "textures" / "bank.npz"
BANK_VERSION = 3
TEXTURE_SIZE = 512
BACKGROUND_SIZE = 160
FIT_IDENTITY_DIMS = 40  # leading ICT identity modes used in the fit (the rest stay 0)


def texture_clips() -> list[Path]:
    """The shared clips usable for textures: all but ``HELD_OUT_CLIPS``."""
    clips = sorted(shared_asset("videos").glob("*.mp4"))
    return [c for c in clips if c.name not in HELD_OUT_CLIPS]


# -- UV layout helpers ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def face_layout() -> dict:
    """Corners of the face-material triangles (vertex, face-tile uv) and landmark UVs."""
    model = load_ict_model()
    sel = model.material_mask("M_Face")
    tri, uvt = model.triangles[sel], model.uv_triangles[sel]
    key = tri.astype(np.int64) * len(model.uv) + uvt
    uniq, inverse = np.unique(key.ravel(), return_inverse=True)
    corner_vertex = uniq // len(model.uv)
    uv = model.uv[uniq % len(model.uv)]
    lm_uv = np.array([uv[np.flatnonzero(corner_vertex == v)[0]] for v in model.landmarks68])
    # Photo colour is taken from the face proper (forehead to just under the chin), not the neck.
    y = model.neutral[corner_vertex, 1]
    # Above the brows, the temples and upper forehead often show hair: keep to the central forehead.
    x = np.abs(model.neutral[corner_vertex, 0])
    allow = np.clip((y + 9.0) / 2.0, 0, 1) * np.clip((9.5 - y) / 2.0, 0, 1)
    allow = allow * np.clip(1.0 - np.clip(y - 4.0, 0, None) * np.clip(x - 4.5, 0, None) / 4.0, 0, 1)
    allow = allow * np.clip((7.2 - x) / 1.2, 0, 1)  # not the sideburns and ears
    return {"corner_vertex": corner_vertex, "uv": uv, "indices": inverse.reshape(-1, 3), "landmark_uv": lm_uv, "allow": allow}


def _to_texel(uv: np.ndarray, size: int) -> np.ndarray:
    """UV -> (row, col) texel coordinates; row 0 is v = 0 (as the GL textures are stored)."""
    return np.stack([uv[:, 1] * size - 0.5, uv[:, 0] * size - 0.5], axis=1)


def region_masks(size: int = TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Soft (size,size) masks of the brows and the lips in the face tile (for make-up-like tints)."""
    from skimage.draw import line_aa, polygon

    lm = _to_texel(face_layout()["landmark_uv"], size)
    lips = np.zeros((size, size), np.float32)
    rr, cc = polygon(lm[48:60, 0], lm[48:60, 1], lips.shape)
    lips[rr, cc] = 1.0
    brows = np.zeros((size, size), np.float32)
    for a, b in [(i, i + 1) for i in range(17, 21)] + [(i, i + 1) for i in range(22, 26)]:
        rr, cc, val = line_aa(*np.round(lm[a]).astype(int), *np.round(lm[b]).astype(int))
        ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        brows[rr[ok], cc[ok]] = np.maximum(brows[rr[ok], cc[ok]], val[ok])
    brows = ndimage.grey_dilation(brows, size=(max(3, size // 70), max(3, size // 90)))
    s = size / 512
    return np.clip(ndimage.gaussian_filter(brows, 3 * s) * 1.5, 0, 1), np.clip(ndimage.gaussian_filter(lips, 2.5 * s) * 1.2, 0, 1)


# -- fitting --------------------------------------------------------------------------------------
@dataclass
class Fit:
    identity_weights: np.ndarray  # (100,) (the first FIT_IDENTITY_DIMS fitted)
    expression_weights: np.ndarray  # (53,)
    R: np.ndarray
    t: np.ndarray
    K: np.ndarray
    rms_px: float  # landmark reprojection RMS


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """Talking-head clips have no calibration: assume a ~45 degree field of view."""
    f = 1.2 * max(width, height)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


def fit_to_landmarks(landmarks_2d: np.ndarray, width: int, height: int, model: ICTModel | None = None) -> Fit:
    """Fits identity, expression and pose of the ICT model to 68 image landmarks (perspective camera)."""
    model = model or load_ict_model()
    K = default_intrinsics(width, height)
    lm = model.landmarks68
    mean = model.neutral[lm].astype(np.float64)
    B_id = model.identity_basis[:FIT_IDENTITY_DIMS, lm].astype(np.float64)  # (k,68,3)
    B_ex = model.expression_basis[:, lm].astype(np.float64)
    n_id, n_ex = len(B_id), len(B_ex)
    size = np.linalg.norm(landmarks_2d.max(0) - landmarks_2d.min(0))
    w_pt = np.ones(68)
    w_pt[:17] = 0.5  # contour landmarks are the least precise ones
    # Initial translation from the landmark box: the ICT face is ~14.7 cm wide.
    width_px = landmarks_2d[:, 0].max() - landmarks_2d[:, 0].min()
    z0 = K[0, 0] * 14.7 / max(width_px, 1.0)
    c = landmarks_2d.mean(0)
    t0 = np.array([(c[0] - K[0, 2]) * z0 / K[0, 0], (c[1] - K[1, 2]) * z0 / K[1, 1], z0]) - FRONTAL @ mean.mean(0)

    def unpack(x):
        return Rotation.from_rotvec(x[:3]).as_matrix() @ FRONTAL, x[3:6], x[6 : 6 + n_id], x[6 + n_id :]

    def residual(x):
        R, t, a_id, a_ex = unpack(x)
        pts = mean + np.tensordot(a_id, B_id, 1) + np.tensordot(a_ex, B_ex, 1)
        cam = pts @ R.T + t
        proj = cam[:, :2] / cam[:, 2:3] * K[0, 0] + K[:2, 2]
        r = ((proj - landmarks_2d) * w_pt[:, None]).ravel() * (100.0 / size)
        return np.concatenate([r, 0.4 * a_id, 0.6 * a_ex])

    def jacobian(x):
        # Analytic for translation and shape weights (linear in camera space); rotation numerically.
        R, t, a_id, a_ex = unpack(x)
        pts = mean + np.tensordot(a_id, B_id, 1) + np.tensordot(a_ex, B_ex, 1)
        cam = pts @ R.T + t
        f, z = K[0, 0], cam[:, 2]
        d_proj = np.zeros((68, 2, 3))  # d(pixel)/d(camera point)
        d_proj[:, 0, 0] = d_proj[:, 1, 1] = f / z
        d_proj[:, :, 2] = -f * cam[:, :2] / z[:, None] ** 2
        d_proj *= (w_pt * 100.0 / size)[:, None, None]
        J = np.zeros((136 + n_id + n_ex, len(x)))
        J[:136, 3:6] = d_proj.reshape(136, 3)
        basis = np.concatenate([B_id, B_ex]) @ R.T  # (k,68,3) camera-space directions
        J[:136, 6:] = np.einsum("pij,kpj->pik", d_proj, basis).reshape(136, -1)
        J[136:, 6:] = np.diag(np.concatenate([np.full(n_id, 0.4), np.full(n_ex, 0.6)]))
        r0 = residual(x)[:136]
        for k in range(3):
            dx = x.copy()
            dx[k] += 1e-6
            J[:136, k] = (residual(dx)[:136] - r0) / 1e-6
        return J

    x0 = np.concatenate([np.zeros(3), t0, np.zeros(n_id), np.zeros(n_ex)])
    lo = np.concatenate([np.full(6, -np.inf), np.full(n_id, -3.0), np.zeros(n_ex)])
    hi = np.concatenate([np.full(6, np.inf), np.full(n_id, 3.0), np.ones(n_ex)])
    x0[6 + n_id :] = 0.01
    sol = least_squares(residual, x0, jac=jacobian, bounds=(lo, hi), x_scale="jac", max_nfev=100, tr_solver="lsmr")
    log.debug("fit: %d evaluations, cost %.3f", sol.nfev, sol.cost)
    R, t, a_id, a_ex = unpack(sol.x)
    id_full = np.zeros(model.identity_basis.shape[0])
    id_full[:n_id] = a_id
    pts = model.vertices(id_full, a_ex)[lm]
    cam = pts @ R.T + t
    proj = cam[:, :2] / cam[:, 2:3] * K[0, 0] + K[:2, 2]
    rms = float(np.sqrt(np.mean(np.sum((proj - landmarks_2d) ** 2, axis=1))))
    return Fit(id_full, a_ex, R, t, K, rms)


# -- baking ---------------------------------------------------------------------------------------
def push_pull_fill(colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Fills texels of zero weight from coarser weighted averages (push-pull / pyramid inpainting)."""
    if min(weight.shape) <= 2:
        return colour
    w = np.clip(weight, 0, 1)
    h, wd = w.shape
    ph, pw = h + h % 2, wd + wd % 2
    cw = np.pad(colour * w[..., None], ((0, ph - h), (0, pw - wd), (0, 0)))
    ww = np.pad(w, ((0, ph - h), (0, pw - wd)))
    c_small = cw.reshape(ph // 2, 2, pw // 2, 2, 3).sum((1, 3))
    w_small = ww.reshape(ph // 2, 2, pw // 2, 2).sum((1, 3))
    coarse = push_pull_fill(c_small / np.maximum(w_small, 1e-6)[..., None], np.minimum(w_small, 1.0))
    up = np.repeat(np.repeat(coarse, 2, 0), 2, 1)[:h, :wd]
    up = ndimage.uniform_filter(up, (2, 2, 1))
    return colour * w[..., None] + up * (1 - w[..., None])


@functools.lru_cache(maxsize=2)
def capture_regions(size: int = TEXTURE_SIZE) -> dict[str, np.ndarray]:
    """(size,size) bool masks in the face tile, from the landmark UVs: ``eyes`` (eye openings, dilated
    over the lids), ``mouth`` (lips), ``brows`` and ``reference`` (cheeks, nose and central forehead:
    where the skin colour statistics of a frame are measured)."""
    from skimage.draw import polygon

    lm = _to_texel(face_layout()["landmark_uv"], size)

    def poly(idx: list[int]) -> np.ndarray:
        m = np.zeros((size, size), bool)
        rr, cc = polygon(lm[idx, 0], lm[idx, 1], m.shape)
        m[rr, cc] = True
        return m

    s = size / 512
    eyes = ndimage.binary_dilation(poly(list(range(36, 42))) | poly(list(range(42, 48))), iterations=max(1, int(14 * s)))
    mouth = ndimage.binary_dilation(poly(list(range(48, 60))), iterations=max(1, int(5 * s)))
    brows = region_masks(size)[0] > 0.25
    hull = poly([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 24, 19])
    reference = hull & ~ndimage.binary_dilation(eyes | mouth | brows, iterations=max(1, int(6 * s)))
    return {"eyes": eyes, "mouth": mouth, "brows": brows, "reference": reference}


def skin_weight(colour: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft (S,S) acceptance of each captured texel as skin, and the frame's median skin colour.

    Hair, ear shadows, background bleed and real eyes mapped onto the lids (where the fit is slightly
    off) are far darker or less skin-hued than the frame's own cheeks: measure the median Lab colour on
    the reference region (cheeks, nose, central forehead) and reject texels far from it. Lips may be
    redder and brows darker; around the eyes the test is stricter (sclera is bright and grey, irises and
    lashes dark)."""
    from skimage.color import rgb2lab

    reg = capture_regions(colour.shape[0])
    lab = rgb2lab(np.clip(colour, 0, 1))
    ref = reg["reference"] & (weight > 0.5)
    if ref.sum() < 200:
        return np.zeros_like(weight), np.array([0.75, 0.58, 0.48])
    med = np.median(lab[ref], axis=0)
    spread = np.median(np.abs(lab[ref] - med), axis=0) * 1.48 + np.array([2.0, 1.5, 1.5])
    # A strongly side-lit face has a wide lightness spread; cap it, or shadowed jaws pass as skin (the
    # mirror and the fill give a better colour for them than their shadow).
    spread[0] = min(spread[0], 7.0)
    dl = (lab[..., 0] - med[0]) / spread[0]
    dab = np.hypot(*((lab[..., 1:] - med[1:]) / spread[1:]).transpose(2, 0, 1))
    # Darker than skin is the usual defect (hair, shadow, eyes): tolerate less below than above.
    dark = np.clip(-dl, 0, None)
    light = np.clip(dl, 0, None)
    lips, brows, eyes = reg["mouth"], reg["brows"], reg["eyes"]
    dark_tol = np.where(brows, 5.0, np.where(lips, 3.5, np.where(eyes, 1.5, 2.0)))
    hue_tol = np.where(lips, 8.0, np.where(brows, 5.0, np.where(eyes, 2.5, 3.2)))
    light_tol = np.where(eyes, 1.8, 3.0)
    bad = np.maximum.reduce([dark / dark_tol, dab / hue_tol, light / light_tol])
    accept = np.clip((1.2 - bad) / 0.4, 0, 1)  # 1 up to 0.8x the tolerance, 0 beyond 1.2x
    from skimage.color import lab2rgb

    base = lab2rgb(med[None, None])[0, 0]
    return accept, base


def _low_pass(lum: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(lum * weight, sigma) / np.maximum(ndimage.gaussian_filter(weight, sigma), 1e-4)


def delight(colour: np.ndarray, weight: np.ndarray, strength: float = 0.75) -> np.ndarray:
    """Flattens the photo's own low-frequency shading (dark jaw undersides, shadowed cheek sides).

    The renderer lights the head itself (and adds ambient occlusion), so a texture should be close to
    albedo: divide out ``strength`` of the weighted low-pass luminance relative to its median, keeping
    the fine detail (brows, lash line, wrinkles). Near the rim of the captured region a wide low-pass
    also averages the bright inside, so a second, narrow pass evens out the rim (a dark ring would
    otherwise be spread outwards by the fill); lips, brows and eyes keep their own tone there."""
    size = colour.shape[0]
    lum = colour.mean(axis=2)
    ok = weight > 0.5
    if ok.sum() < 100:
        return colour
    ref = np.median(lum[ok])
    s = size / 512
    gain = np.clip(ref / np.maximum(_low_pass(lum, weight, 14.0 * s), 1e-3), 0.5, 2.0) ** strength
    lum2 = lum * gain
    reg = capture_regions(size)
    features = ndimage.binary_dilation(reg["mouth"] | reg["brows"] | reg["eyes"], iterations=max(1, int(4 * s)))
    rim = ndimage.distance_transform_edt(weight > 0.3) < 18.0 * s
    rim_w = np.where(features, 0.0, ndimage.gaussian_filter(rim.astype(np.float32), 4.0 * s))
    gain2 = np.clip(ref / np.maximum(_low_pass(lum2, weight, 5.0 * s), 1e-3), 0.6, 1.8) ** (0.8 * rim_w)
    return np.clip(colour * (gain * gain2)[..., None], 0, 1)


def combine_captures(captures: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Robust weighted mean of several frames' (colour, weight) captures of one subject.

    One reweighting pass pulls each texel towards the frames that agree (a cheap weighted median):
    expression-dependent shading, a passing hand or a blink in one frame is voted out."""
    cols = np.stack([c for c, _ in captures])
    ws = np.stack([w for _, w in captures])
    mean = (cols * ws[..., None]).sum(0) / np.maximum(ws.sum(0), 1e-6)[..., None]
    for _ in range(2):
        dev = np.linalg.norm(cols - mean, axis=-1)
        w2 = ws / (1.0 + (dev / 0.06) ** 2)
        mean = (cols * w2[..., None]).sum(0) / np.maximum(w2.sum(0), 1e-6)[..., None]
    return mean, np.clip(ws.max(0), 0, 1)


@dataclass
class Baker:
    """GL meshes for baking; reuse one per process."""

    model: ICTModel = field(default_factory=load_ict_model)

    def __post_init__(self):
        self.raster = Rasterizer.shared()
        fl = face_layout()
        self.face = fl
        n = len(fl["uv"])
        self.face_mesh = self.raster.mesh(fl["uv"], np.repeat(fl["allow"][:, None], 3, 1), np.zeros((n, 2)), fl["indices"])
        drawn = self.model.drawn_triangles()
        tri = self.model.triangles[drawn]
        self.full_tri = tri
        nv = self.model.num_vertices
        self.full_mesh = self.raster.mesh(np.zeros((nv, 2)), np.zeros((nv, 3)), np.zeros((nv, 2)), tri)

    @functools.cached_property
    def chart(self) -> np.ndarray:
        """(S,S) bool: texels covered by the face tile's triangles."""
        n = len(self.face["uv"])
        pos = np.tile([0.0, 0.0, 10.0], (n, 1))  # every point projects inside the fake photo below
        self.face_mesh.set_albedo(self.face["uv"], np.ones((n, 3)), np.zeros((n, 2)))
        self.face_mesh.set_geometry(pos, np.tile([0.0, 0.0, -1.0], (n, 1)))
        K = np.array([[10.0, 0, 1.5], [0, 10.0, 1.5], [0, 0, 1]])
        _, w = self.raster.bake_uv(self.face_mesh, np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 1e6, np.float32), K, TEXTURE_SIZE)
        fl = self.face
        self.face_mesh.set_albedo(fl["uv"], np.repeat(fl["allow"][:, None], 3, 1), np.zeros((n, 2)))
        return w > 0.5

    def capture(self, frame: np.ndarray, fit: Fit, size: int = TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """(S,S,3) f32 colour and (S,S) weight of the texels this frame shows cleanly (0 elsewhere).

        Only texels that project well inside the fitted head's silhouette (eroded in the image),
        face the camera squarely, are not hidden, and pass the skin-colour test are kept."""
        assert size == TEXTURE_SIZE, "the chart mask is built at TEXTURE_SIZE"
        v = self.model.vertices(fit.identity_weights, fit.expression_weights).astype(np.float64)
        n = vertex_normals(v, self.model.triangles)
        v_cam, n_cam = v @ fit.R.T + fit.t, n @ fit.R.T
        h, w = frame.shape[:2]
        self.full_mesh.set_geometry(v_cam, n_cam)
        depth = self.raster.draw(self.full_mesh, fit.K, w, h, np.zeros((1, 1, 3), np.uint8), supersample=1).depth
        # Erode the silhouette: a slightly-off fit puts background, hair and ear shadow on its rim.
        lm_px = v_cam[self.model.landmarks68, :2] / v_cam[self.model.landmarks68, 2:3] * fit.K[0, 0]
        face_px = float(np.ptp(lm_px[:, 0]))
        inside = ndimage.binary_erosion(np.isfinite(depth), iterations=max(2, int(0.05 * face_px)))
        cv = self.face["corner_vertex"]
        self.face_mesh.set_geometry(v_cam[cv], n_cam[cv])
        colour, weight = self.raster.bake_uv(self.face_mesh, frame, np.where(inside, depth, 0.0).astype(np.float32),
                                             fit.K, size, facing_range=(0.35, 0.8))
        weight = np.where(self.chart, np.clip(weight, 0, 1), 0.0)
        accept, _ = skin_weight(colour, weight)
        # Erode in the texture too: a capture's soft rim holds the darkest, least certain colours, and
        # the fill would spread them outwards as a dark ring.
        k = max(3, size // 100)
        return colour, ndimage.grey_erosion(weight * accept, size=(k, k))

    def finish(self, colour: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Mirror-fill, push-pull fill and feather a capture -> (uint8 texture, base colour, observed)."""
        size = colour.shape[0]
        chart = self.chart
        colour = delight(colour, weight)
        # Hidden side from the mirror image of the seen side (symmetric layout: u -> 1 - u).
        colour_m, weight_m = colour[:, ::-1], weight[:, ::-1]
        w_m = weight_m * (1.0 - weight) ** 2
        total = weight + w_m
        combined = (colour * weight[..., None] + colour_m * w_m[..., None]) / np.maximum(total, 1e-6)[..., None]
        filled = push_pull_fill(np.where(total[..., None] > 0, combined, 0), np.clip(total, 0, 1))
        good = (weight > 0.8) & capture_regions(size)["reference"]
        base = np.median(colour[good], axis=0) if good.sum() > 100 else np.array([0.75, 0.58, 0.48])
        # Feather into the base colour: at the tile border (the seam with the back of the head) and
        # away from what the photo showed (neck, under the chin), so no clothing or shadow spreads.
        dist = ndimage.distance_transform_edt(chart)
        alpha = np.clip((dist - 2.0) / (14.0 * size / 512), 0, 1)
        seen = np.clip(ndimage.gaussian_filter(np.clip(total, 0, 1), 6.0 * size / 512) * 1.6, 0, 1)
        alpha = (alpha * seen * seen * (3 - 2 * seen))[..., None]
        grain = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 1, (size, size)), 1.0)[..., None] * 0.015
        out = filled * alpha + base * (1 - alpha) + grain * (1 - alpha)
        observed = float(weight[chart].mean())
        return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8), base.astype(np.float32), observed

    def bake(self, frame: np.ndarray, fit: Fit, size: int = TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray, float]:
        """Returns (texture uint8 (S,S,3), base skin colour sRGB (3,), observed fraction of the face)."""
        return self.finish(*self.capture(frame, fit, size))


# -- landmarks on real frames ---------------------------------------------------------------------
class FrameLandmarks:
    """Detector + teacher: the largest face's 68 landmarks in a frame, or None."""

    def __init__(self):
        from training.teacher.tddfa import Teacher

        self.teacher = Teacher()
        try:
            from plugins.detectors.centerface import CenterFace

            self.detector = CenterFace()
        except ImportError as e:  # the detector is optional here: a talking-head frame is centred
            log.warning("CenterFace unavailable (%s): using a centred box + teacher refinement", e)
            self.detector = None

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        h, w = frame.shape[:2]
        if self.detector is not None:
            det = self.detector.detect(frame)
            if len(det.boxes) == 0:
                return None
            b = det.boxes[np.argmax((det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1]))]
        else:
            s = 0.55 * min(h, w)
            b = np.array([w / 2 - s / 2, h / 2 - s / 2, w / 2 + s / 2, h / 2 + s / 2], np.float32)
        res = self.teacher.predict(frame, b[None].astype(np.float32))
        res = self.teacher.predict_from_landmarks(frame, res.landmarks)  # second pass: tighter crop
        return res.landmarks[0], np.asarray(b, np.float32)


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """{index: upright RGB frame} for the wanted frame indices (engine.video, the one decode core)."""
    from engine.video import iter_frames  # PyAV: only for building the bank from clips

    want, out = set(indices), {}
    for i, frame in iter_frames(path, stop=max(want) + 1 if want else 0):
        if i in want:
            out[i] = frame
    return out


def count_frames(path: Path) -> int:
    from engine.video import count_frames as video_frames

    return video_frames(path)


def background_patches(frame: np.ndarray, box: np.ndarray, rng: np.random.Generator, n: int = 2) -> list[np.ndarray]:
    """Square patches away from the (enlarged) face box: walls, green screens, rooms."""
    h, w = frame.shape[:2]
    bw, bh = box[2] - box[0], box[3] - box[1]
    x0, y0, x1, y1 = box[0] - 0.25 * bw, box[1] - 0.5 * bh, box[2] + 0.25 * bw, box[3] + 0.3 * bh
    out = []
    for _ in range(20 * n):
        s = int(rng.uniform(0.15, 0.3) * min(h, w))
        px, py = rng.integers(0, w - s + 1), rng.integers(0, h - s + 1)
        overlap = max(0.0, min(px + s, x1) - max(px, x0)) * max(0.0, min(py + s, y1) - max(py, y0))
        if overlap < 0.1 * s * s:  # mostly away from the face and hair
            from PIL import Image

            patch = Image.fromarray(frame[py : py + s, px : px + s]).resize((BACKGROUND_SIZE, BACKGROUND_SIZE))
            out.append(np.asarray(patch))
            if len(out) == n:
                break
    return out


# -- the bank -------------------------------------------------------------------------------------
@dataclass
class TextureBank:
    textures: np.ndarray  # (N,S,S,3) uint8, row 0 = v = 0
    base_colours: np.ndarray  # (N,3) sRGB [0,1]
    sources: list[str]  # "clip.mp4:frame"
    backgrounds: np.ndarray  # (M,B,B,3) uint8 real-frame patches away from faces
    brow_mask: np.ndarray = None  # (S,S) f32
    lip_mask: np.ndarray = None

    def __post_init__(self):
        if self.brow_mask is None:
            self.brow_mask, self.lip_mask = region_masks(self.textures.shape[1])

    def __len__(self) -> int:
        return len(self.textures)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, version=BANK_VERSION, textures=self.textures, base_colours=self.base_colours,
                 sources=np.array(self.sources), backgrounds=self.backgrounds)
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path = BANK_PATH) -> TextureBank:
        d = np.load(path)
        if int(d["version"]) != BANK_VERSION:
            raise ValueError(f"{path}: texture bank version {int(d['version'])} != {BANK_VERSION}; rebuild it with "
                             "`python -m training.textures build`")
        return cls(d["textures"], d["base_colours"], [str(s) for s in d["sources"]], d["backgrounds"])

    @classmethod
    def load_or_build(cls, path: Path = BANK_PATH) -> TextureBank:
        if not path.exists():
            log.info("texture bank %s missing: building it (once, about a minute)", path)
            build_bank(out=path)
        return cls.load(path)


def build_bank(
    clips: list[Path] | None = None,
    frames_per_clip: int = 6,
    out: Path | None = BANK_PATH,
    max_rms_px: float = 6.0,
    min_observed: float = 0.06,
    seed: int = 0,
) -> TextureBank:
    """One texture per clip from ``frames_per_clip`` evenly spaced frames (held-out clips refused)."""
    clips = texture_clips() if clips is None else clips
    held = [c.name for c in clips if c.name in HELD_OUT_CLIPS]
    if held:
        raise ValueError(f"{held} are held out for validation (training.textures.HELD_OUT_CLIPS)")
    marks, baker, rng = FrameLandmarks(), Baker(), np.random.default_rng(seed)
    textures, bases, sources, backgrounds, skipped = [], [], [], [], []
    for clip in tqdm(clips, desc="texture bank"):
        n = count_frames(clip)
        idx = np.linspace(0, n - 1, frames_per_clip + 2)[1:-1].round().astype(int).tolist()
        captures, used = [], []
        for i, frame in read_frames(clip, idx).items():
            found = marks(frame)
            if found is None:
                skipped.append(f"{clip.name}:{i} no face")
                continue
            lm, box = found
            backgrounds += background_patches(frame, box, rng)
            if clip.name in GLASSES_CLIPS:
                continue
            fit = fit_to_landmarks(lm, frame.shape[1], frame.shape[0], baker.model)
            face_px = np.linalg.norm(lm.max(0) - lm.min(0))
            if fit.rms_px > max_rms_px * face_px / 300:
                skipped.append(f"{clip.name}:{i} fit rms {fit.rms_px:.1f}px")
                continue
            colour, weight = baker.capture(frame, fit)
            if float(weight[baker.chart].mean()) < min_observed:
                skipped.append(f"{clip.name}:{i} observed {float(weight[baker.chart].mean()):.2f}")
                continue
            captures.append((colour, weight))
            used.append(str(i))
        if not captures:
            continue
        # One texture per subject: the frames of a clip are combined (expression shading voted out).
        tex, base, _ = baker.finish(*combine_captures(captures))
        textures.append(tex)
        bases.append(base)
        sources.append(f"{clip.name}:{','.join(used)}")
    if skipped:
        log.warning("texture bank: skipped %d frames: %s", len(skipped), "; ".join(skipped))
    if not textures:
        raise RuntimeError(f"no usable frame in {[c.name for c in clips]}: {skipped}")
    bank = TextureBank(np.stack(textures), np.stack(bases), sources,
                       np.stack(backgrounds) if backgrounds else np.zeros((0, BACKGROUND_SIZE, BACKGROUND_SIZE, 3), np.uint8))
    if out is not None:
        bank.save(out)
        log.info("texture bank: %d textures, %d backgrounds -> %s", len(bank), len(bank.backgrounds), out)
    return bank


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.textures", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the texture bank from the shared clips")
    b.add_argument("--frames-per-clip", type=int, default=6)
    b.add_argument("--out", type=Path, default=BANK_PATH)
    b.add_argument("--preview", type=Path, help="also write a JPEG sheet of the textures")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    bank = build_bank(frames_per_clip=args.frames_per_clip, out=args.out)
    print(f"{len(bank)} textures, {len(bank.backgrounds)} background patches -> {args.out} "
          f"({time.perf_counter() - t0:.1f} s)")
    if args.preview:
        from PIL import Image

        tiles = [Image.fromarray(t[::-1]).resize((192, 192)) for t in bank.textures]
        cols = 8
        sheet = Image.new("RGB", (192 * cols, 192 * ((len(tiles) + cols - 1) // cols)))
        for k, tile in enumerate(tiles):
            sheet.paste(tile, (192 * (k % cols), 192 * (k // cols)))
        sheet.save(args.preview, quality=90)


if __name__ == "__main__":
    main()
