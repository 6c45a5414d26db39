"""Temporal smoothing: the One-Euro filter (Casiez, Roussel, Vogel, CHI 2012) and a per-track face smoother.

The One-Euro filter is an exponential low-pass whose cutoff rises with the signal's speed:
``cutoff = min_cutoff + beta * |dx/dt|``. A still face gets a low cutoff (jitter removed), a moving one
a high cutoff (little lag). It is causal (uses only past samples) and works on arrays of any shape,
element-wise. Speeds are divided by a ``scale`` the caller passes, so ``beta`` is in units of
1 / (face sizes per second) and one parameter set suits faces of any size.

:class:`FaceSmoother` keeps one filter set per track id and smooths an :class:`engine.frame.Face` in
place: ``landmarks_2d`` (speed in face sizes, the 2D landmark box), ``landmarks_3d`` and ``translation``
(speed in 3D face sizes, cm), and ``rotation`` (the 3x3 matrix filtered element-wise, then projected
back onto SO(3) with an SVD; its entries are unitless, so beta is per (rad/s) roughly), after which
``euler`` is recomputed with :func:`engine.geometry.euler_from_rotation`. :meth:`FaceSmoother.apply_all`
does the same for all faces of a frame in one vectorised step (the same arithmetic, over a face axis).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from engine.frame import Face, Frame
from engine.geometry import euler_from_rotation, orthonormalize, visibility_mask, visibility_thresholds

_VISIBLE_THRESHOLDS = visibility_thresholds()
DEFAULT_FACE_SIZE_CM = 15.0  # when no 3D landmarks give the face's size (brow-to-chin ~ ear-to-ear)


@dataclass(frozen=True)
class OneEuroParams:
    """``min_cutoff`` Hz (lower = smoother when still), ``beta`` (higher = less lag when moving),
    ``d_cutoff`` Hz (low-pass of the speed estimate)."""

    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0


# Defaults measured in tests/test_smoothing.py: noise of 1 % of the face at 25 fps -> jitter / 5 or
# better when still; a face moving one face size per second trails by about 2 % of its size. Rotation:
# 1 degree noise -> jitter x 0.15, a 45 deg/s turn trails by about 1.4 degrees.
LANDMARK_PARAMS = OneEuroParams(min_cutoff=0.5, beta=5.0)
TRANSLATION_PARAMS = OneEuroParams(min_cutoff=0.5, beta=5.0)
ROTATION_PARAMS = OneEuroParams(min_cutoff=0.5, beta=5.0)


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal One-Euro filter over arrays of any (fixed) shape. Call with each new sample and its time.

    A sample whose time does not advance returns the previous output; a time going backwards or a
    shape change restarts the filter (e.g. a looped file).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"need min_cutoff > 0, d_cutoff > 0, beta >= 0; got {min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.reset()

    @classmethod
    def from_params(cls, params: OneEuroParams) -> OneEuroFilter:
        return cls(params.min_cutoff, params.beta, params.d_cutoff)

    def reset(self) -> None:
        self._x: np.ndarray | None = None  # last output
        self._dx: np.ndarray | None = None  # last filtered speed
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """Filter sample ``x`` taken at time ``t`` (seconds); ``scale`` divides the speed (see module doc).
        Returns a new float64 array of ``x``'s shape."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None or t < self._t or x.shape != self._x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        dt = float(t) - self._t
        if dt <= 0.0:
            return self._x.copy()
        speed = (x - self._x) / dt / max(float(scale), 1e-12)
        self._dx = self._dx + _alpha(self.d_cutoff, dt) * (speed - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._t = float(t)
        return self._x.copy()


def _steady(f: OneEuroFilter, x: np.ndarray, t: float) -> bool:
    """Would ``f(x, t)`` take the ordinary filter step (initialised, same shape, time advancing)?"""
    return f._x is not None and f._t is not None and t > f._t and x.shape == f._x.shape


def _step_many(filters: list[OneEuroFilter], x: np.ndarray, t: float, scale: np.ndarray) -> np.ndarray:
    """One :class:`OneEuroFilter` step of every filter in ``filters`` (all steady, one params set) on
    the rows of ``x`` (n, ...) at time ``t``, vectorised; returns the (n, ...) outputs."""
    f0 = filters[0]
    xp = np.stack([f._x for f in filters])
    dxp = np.stack([f._dx for f in filters])
    shape = (-1,) + (1,) * (x.ndim - 1)
    dt = (t - np.array([f._t for f in filters])).reshape(shape)
    speed = (x - xp) / dt / np.maximum(scale, 1e-12).reshape(shape)
    dx = dxp + _alpha(f0.d_cutoff, dt) * (speed - dxp)
    out = xp + _alpha(f0.min_cutoff + f0.beta * np.abs(dx), dt) * (x - xp)
    for i, f in enumerate(filters):
        f._x, f._dx, f._t = out[i], dx[i], float(t)
    return out


class RotationFilter:
    """One-Euro on the 9 matrix entries, re-orthonormalised. Averaging matrices is well behaved for
    the small frame-to-frame rotations of a tracked head (no quaternion sign flips to handle)."""

    def __init__(self, params: OneEuroParams | None = None):
        self._filter = OneEuroFilter.from_params(params or ROTATION_PARAMS)

    def reset(self) -> None:
        self._filter.reset()

    def __call__(self, rotation: np.ndarray, t: float) -> np.ndarray:
        return orthonormalize(self._filter(np.asarray(rotation, np.float64).reshape(3, 3), t))


def frame_timestamp(frame: Frame, fps: float = 25.0) -> float:
    """Seconds of ``frame`` for filtering: its pts, or ``index / fps`` when the source has no pts."""
    return float(frame.pts) if frame.pts is not None else frame.index / fps


def _extent(points: np.ndarray) -> float:
    """Larger side of the bounding box of (K, D) points, over the first two axes."""
    p = np.asarray(points, np.float64)[:, :2]
    return float(np.max(p.max(axis=0) - p.min(axis=0)))


class _TrackFilters:
    def __init__(self, landmarks: OneEuroParams, rotation: OneEuroParams, translation: OneEuroParams):
        self.landmarks_2d = OneEuroFilter.from_params(landmarks)
        self.landmarks_3d = OneEuroFilter.from_params(landmarks)
        self.translation = OneEuroFilter.from_params(translation)
        self.rotation = RotationFilter(rotation)


class FaceSmoother:
    """Per-track One-Euro smoothing of a stream's faces (one instance per stream).

    ``apply(face, t)`` smooths ``face`` in place (and returns it) with the filters of ``face.track_id``;
    a track id it has not seen gets fresh filters, so a new track never inherits another's state. Faces
    without a track id are returned unchanged (nothing ties them to a previous frame).
    Call :meth:`retain` with the live track ids now and then to free filters of ended tracks.
    """

    def __init__(
        self,
        landmarks: OneEuroParams = LANDMARK_PARAMS,
        rotation: OneEuroParams = ROTATION_PARAMS,
        translation: OneEuroParams = TRANSLATION_PARAMS,
    ):
        self.landmarks = landmarks
        self.rotation = rotation
        self.translation = translation
        self._tracks: dict[int, _TrackFilters] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def apply(self, face: Face, t: float) -> Face:
        if face.track_id is None:
            return face
        filters = self._tracks.get(face.track_id)
        if filters is None:
            filters = self._tracks[face.track_id] = _TrackFilters(self.landmarks, self.rotation, self.translation)
        if face.landmarks_2d is not None:
            size = max(_extent(face.landmarks_2d), 1.0)
            face.landmarks_2d = filters.landmarks_2d(face.landmarks_2d, t, size).astype(np.float32)
        size_3d = DEFAULT_FACE_SIZE_CM
        if face.landmarks_3d is not None:
            size_3d = max(_extent(face.landmarks_3d), 1.0)
            face.landmarks_3d = filters.landmarks_3d(face.landmarks_3d, t, size_3d).astype(np.float32)
        if face.translation is not None:
            face.translation = filters.translation(face.translation, t, size_3d).astype(np.float32)
        if face.rotation is not None:
            rotation = filters.rotation(face.rotation, t)
            face.rotation = rotation.astype(np.float32)
            face.euler = euler_from_rotation(rotation).astype(np.float32)
        return face

    def apply_all(self, faces: list[Face], t: float) -> list[Face]:
        """:meth:`apply` to every face of one frame, vectorised over the faces (same results).

        Faces with every smoothed field whose filters are steady go through one batched step; the
        others (new tracks, restarts, missing fields) through :meth:`apply`.
        """
        if sum(face.track_id is not None for face in faces) < 2:  # one face: the plain step has less overhead
            for face in faces:
                self.apply(face, t)
            return faces
        batch: list[tuple[Face, _TrackFilters]] = []
        for face in faces:
            if face.track_id is None:
                continue
            filters = self._tracks.get(face.track_id)
            if (filters is not None and face.landmarks_2d is not None and face.landmarks_3d is not None
                    and face.translation is not None and face.rotation is not None
                    and _steady(filters.landmarks_2d, face.landmarks_2d, t)
                    and _steady(filters.landmarks_3d, face.landmarks_3d, t)
                    and _steady(filters.translation, face.translation, t)
                    and _steady(filters.rotation._filter, face.rotation.reshape(3, 3), t)):
                batch.append((face, filters))
            else:
                self.apply(face, t)
        if not batch:
            return faces
        fs = [f for _, f in batch]
        lm2 = np.stack([face.landmarks_2d for face, _ in batch]).astype(np.float64)
        lm3 = np.stack([face.landmarks_3d for face, _ in batch]).astype(np.float64)
        size_2d = np.maximum(np.ptp(lm2, axis=1).max(axis=-1), 1.0)
        size_3d = np.maximum(np.ptp(lm3[..., :2], axis=1).max(axis=-1), 1.0)
        lm2 = _step_many([f.landmarks_2d for f in fs], lm2, t, size_2d).astype(np.float32)
        lm3 = _step_many([f.landmarks_3d for f in fs], lm3, t, size_3d).astype(np.float32)
        trans = np.stack([face.translation for face, _ in batch]).astype(np.float64)
        trans = _step_many([f.translation for f in fs], trans, t, size_3d).astype(np.float32)
        rot = np.stack([face.rotation for face, _ in batch]).astype(np.float64)
        rot = orthonormalize(_step_many([f.rotation._filter for f in fs], rot, t, np.ones(len(fs))))
        euler = euler_from_rotation(rot).astype(np.float32)
        rot32 = rot.astype(np.float32)
        for i, (face, _) in enumerate(batch):
            face.landmarks_2d, face.landmarks_3d, face.translation = lm2[i], lm3[i], trans[i]
            face.rotation, face.euler = rot32[i], euler[i]
        return faces

    def update(self, faces: list[Face], t: float, live_ids: Iterable[int], normals: np.ndarray | None = None
               ) -> list[Face]:
        """One frame: smooth ``faces`` (:meth:`apply_all`), keep ``landmarks_3d = R @ L + t`` (the canonical
        shape follows the smoothed 3D points) and, given the bundle's ``normals``, the occlusion mask of the
        smoothed rotation; then free the filters of tracks not in ``live_ids``."""
        self.apply_all(faces, t)
        if faces and normals is not None:
            R = np.stack([f.rotation for f in faces])
            tr = np.stack([f.translation for f in faces])
            canonical = ((np.stack([f.landmarks_3d for f in faces]) - tr[:, None]) @ R).astype(np.float32)
            visibility = visibility_mask(R, normals, _VISIBLE_THRESHOLDS)
            for i, face in enumerate(faces):
                face.landmarks_canonical, face.visibility = canonical[i], visibility[i]
        self.retain(live_ids)
        return faces

    def forget(self, track_id: int) -> None:
        """Drop one track's filters (its id will not come back; a new id starts fresh anyway)."""
        self._tracks.pop(track_id, None)

    def retain(self, track_ids: Iterable[int]) -> None:
        """Keep only the filters of ``track_ids`` (the tracker's live tracks)."""
        keep = set(track_ids)
        for tid in [t for t in self._tracks if t not in keep]:
            del self._tracks[tid]

    def reset(self) -> None:
        self._tracks.clear()
