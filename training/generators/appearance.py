"""Procedural appearance variation for the embedded generator: skin tone, make-up tint, eyes, hair,
light, backgrounds and camera artefacts. Everything is drawn from a numpy Generator (reproducible)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

# Linear-RGB palettes (roughly measured photo colours, converted from sRGB).
EYE_COLOURS = np.array([
    [0.06, 0.03, 0.015], [0.10, 0.05, 0.02], [0.16, 0.10, 0.04],  # dark brown, brown, hazel
    [0.10, 0.16, 0.24], [0.08, 0.13, 0.08], [0.14, 0.15, 0.16],  # blue, green, grey
])
EYE_WEIGHTS = np.array([0.35, 0.25, 0.12, 0.12, 0.08, 0.08])
HAIR_COLOURS = np.array([
    [0.012, 0.010, 0.009], [0.030, 0.018, 0.012], [0.07, 0.04, 0.02],  # black, dark brown, brown
    [0.30, 0.20, 0.09], [0.25, 0.24, 0.23], [0.18, 0.06, 0.02],  # blonde, grey, red
])
HAIR_WEIGHTS = np.array([0.3, 0.3, 0.18, 0.1, 0.07, 0.05])


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), 2.2)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), 1.0 / 2.2)


def sample_skin_variation(rng: np.random.Generator) -> dict:
    return {
        "gain": float(np.exp(rng.normal(0.05, 0.08))),
        "saturation": float(rng.uniform(0.75, 1.05)),
        "balance": rng.normal(1.0, 0.035, 3).tolist(),
        "brow_tint": float(rng.uniform(0.0, 0.55) if rng.random() < 0.6 else 0.0),
        "lip_tint": float(rng.uniform(0.0, 0.4) if rng.random() < 0.45 else 0.0),
        "lip_colour": [float(rng.uniform(0.55, 0.8)), float(rng.uniform(0.12, 0.3)), float(rng.uniform(0.15, 0.3))],
    }


def vary_skin(texture: np.ndarray, var: dict, brow_mask: np.ndarray, lip_mask: np.ndarray) -> np.ndarray:
    """Tone / saturation / colour balance and make-up-like brow and lip tint on an sRGB uint8 texture."""
    t = texture.astype(np.float32) / 255.0
    grey = t.mean(axis=2, keepdims=True)
    t = grey + (t - grey) * var["saturation"]
    t = t * var["gain"] * np.asarray(var["balance"], np.float32)
    if var["brow_tint"] > 0:
        t = t * (1.0 - var["brow_tint"] * 0.6 * brow_mask[..., None])
    if var["lip_tint"] > 0:
        a = var["lip_tint"] * lip_mask[..., None]
        t = t * (1 - a) + a * np.asarray(var["lip_colour"], np.float32) * (0.6 + 0.4 * t.mean(axis=2, keepdims=True) / 0.5)
    return (np.clip(t, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def sample_light(rng: np.random.Generator) -> dict:
    """Key light direction in the head frame (towards the light), intensities and colour temperature."""
    az, el = np.radians(rng.uniform(-75, 75)), np.radians(rng.uniform(-15, 60))
    warm = rng.uniform(-1, 1)
    colour = np.array([1.0 + 0.08 * warm, 1.0, 1.0 - 0.12 * warm])
    # Textures already carry the photo's soft light: key + ambient sum to about 1 so tone stays real.
    key = rng.uniform(0.25, 0.6)
    ambient = rng.uniform(0.85, 1.15) - 0.6 * key
    return {
        "dir_head": [float(np.sin(az) * np.cos(el)), float(np.sin(el)), float(np.cos(az) * np.cos(el))],
        "key": (key * colour).tolist(),
        "sky": (ambient * np.array([1.0, 1.0, 1.0 + 0.05 * rng.uniform(-1, 1)])).tolist(),
        "ground": (ambient * rng.uniform(0.45, 0.75) * np.array([1.0, 0.95, 0.9])).tolist(),
        "specular": float(rng.uniform(0.1, 0.4)),
        "gloss": float(rng.uniform(12, 40)),
    }


def procedural_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size,size,3) f32 sRGB: smooth gradient + blurred blobs + fine grain, like an out-of-focus room."""
    grey = rng.uniform(0.15, 0.85)
    base = np.clip(grey + rng.normal(0, 0.08, 3), 0, 1)  # muted, like walls and rooms
    other = np.clip(base + rng.normal(0, 0.12, 3), 0, 1)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ang = rng.uniform(0, 2 * np.pi)
    g = np.clip((np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    img = base * (1 - g) + other * g
    low = rng.normal(0, 1, (8, 8, 1)) + rng.normal(0, 0.3, (8, 8, 3))
    low = np.dstack([_resize(low[..., c], size, size) for c in range(3)])  # bicubic: 50x faster than ndimage.zoom
    img = img + 0.07 * low
    n_blobs = rng.integers(0, 6)
    for _ in range(n_blobs):
        cx, cy, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(0.05, 0.3) * size]
        d = np.sqrt((xx * size - cx) ** 2 + (yy * size - cy) ** 2)
        img = img + (rng.uniform(-0.15, 0.15) + rng.uniform(-0.04, 0.04, 3) * np.clip(1 - d / r, 0, 1)[..., None] ** 0.5)
    img = img + rng.normal(0, 0.01, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def photo_background(patch: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A real-frame patch (uint8) randomly cropped, flipped, resized and defocused -> (size,size,3) f32."""
    h, w = patch.shape[:2]
    c = int(min(h, w) * rng.uniform(0.6, 1.0))
    y0, x0 = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
    crop = patch[y0 : y0 + c, x0 : x0 + c]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3.0) * size / 256))
    return np.asarray(img, np.float32) / 255.0


def sample_artefacts(rng: np.random.Generator) -> dict:
    return {
        "blur": float(rng.uniform(0.3, 1.3) if rng.random() < 0.3 else 0.0),
        "noise": float(rng.uniform(0.0, 0.025)),
        "jpeg": int(rng.integers(35, 96)) if rng.random() < 0.6 else 0,
    }


def apply_artefacts(image: np.ndarray, art: dict, rng: np.random.Generator) -> np.ndarray:
    """f32 sRGB (H,W,3) -> uint8 after defocus blur (sigma in pixels at 256 px), sensor noise, JPEG."""
    size = image.shape[1]
    if art["blur"] > 0:
        s = art["blur"] * size / 256.0
        image = ndimage.gaussian_filter(image, (s, s, 0))
    if art["noise"] > 0:
        image = image + rng.normal(0, art["noise"], image.shape).astype(np.float32)
    out = (np.clip(image, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    if art["jpeg"]:
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=art["jpeg"])
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


CLOTH_COLOURS = np.array([  # linear RGB: black, charcoal, navy, white, grey, olive, burgundy, denim, beige
    [0.012, 0.012, 0.014], [0.05, 0.05, 0.055], [0.015, 0.02, 0.06], [0.55, 0.55, 0.53], [0.2, 0.2, 0.2],
    [0.07, 0.08, 0.035], [0.12, 0.015, 0.025], [0.06, 0.1, 0.17], [0.4, 0.32, 0.22],
])


def sample_look(rng: np.random.Generator) -> dict:
    """Hair volume, clothing at the neck, how the neck's cut fades out, skin and hair light response."""
    clothed = rng.random() < 0.65
    return {
        "hair_thickness_cm": float(rng.uniform(0.2, 1.1)),
        "collar_cm": float(rng.uniform(-15.5, -12.0)) if clothed else None,
        "collar_dip_cm": float(rng.uniform(0.0, 3.0)),
        "cloth_colour": (CLOTH_COLOURS[rng.integers(len(CLOTH_COLOURS))] * rng.uniform(0.7, 1.3, 3)).tolist(),
        "neck_fade_cm": float(rng.uniform(2.5, 6.0)),
        "subsurface": float(rng.uniform(0.6, 1.4)),
        "hair_sheen": float(rng.uniform(0.15, 0.5)),
    }


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of a 2-D float array."""
    return np.asarray(Image.fromarray(np.asarray(a, np.float32), mode="F").resize((width, height), Image.BICUBIC))


def hair_map(rng: np.random.Generator, colour: np.ndarray, width: int = 512, height: int = 128) -> np.ndarray:
    """(height,width,4) uint8 strand map: sRGB hair colour and strand density (alpha).

    Columns are azimuth around the head and rows the angle from the crown, so blurring noise much
    more along the rows than across them makes strands that run from the crown down. Clumps (low
    frequency) and per-strand brightness and hue jitter keep it from looking like a swim cap."""
    # Coarser noise is made small and resized up (a few ms per identity instead of tens).
    fine = ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), (6.0 * height / 256, 0.6), mode="wrap")
    mid = _resize(ndimage.gaussian_filter(rng.normal(0, 1, (height // 4, width // 4)), (3.5, 0.6), mode="wrap"), width, height)
    clump = _resize(ndimage.gaussian_filter(rng.normal(0, 1, (height // 16, width // 16)), (1.3, 0.6), mode="wrap"), width, height)
    s = fine / fine.std() * 0.6 + mid / mid.std() * 0.3 + clump / clump.std() * 0.35
    density = np.clip(0.55 + 0.35 * s, 0, 1)
    bright = np.exp(0.35 * s)[..., None]
    hue = 1.0 + 0.06 * (mid / mid.std())[..., None] * np.array([1.0, 0.2, -0.8])
    lin = np.clip(np.asarray(colour, np.float64) * bright * hue, 0, 1)
    rgb = linear_to_srgb(lin)
    return (np.dstack([rgb, density]) * 255.0 + 0.5).astype(np.uint8)
