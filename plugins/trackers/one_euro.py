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
``euler`` is recomputed with :func:`engine.geometry.euler_from_rotation`. All fields of all faces of a frame
go through one vectorised filter step (:meth:`FaceSmoother.apply_all`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
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


def _check(params: OneEuroParams) -> None:
    if params.min_cutoff <= 0 or params.d_cutoff <= 0 or params.beta < 0:
        raise ValueError(f"need min_cutoff > 0, d_cutoff > 0, beta >= 0; got {params.min_cutoff}, "
                         f"{params.d_cutoff}, {params.beta}")


def _one_euro_step(x, x_prev, dx_prev, dt, scale, min_cutoff, beta, d_cutoff):
    """One One-Euro step, element-wise (arrays broadcast; parameters may be per element): the new output
    and filtered speed from sample ``x``, the previous output and speed, the time step ``dt`` and the
    speed ``scale``. Shared by :class:`OneEuroFilter` and :class:`FaceSmoother`."""
    speed = (x - x_prev) / (dt * scale)
    dx = dx_prev + _alpha(d_cutoff, dt) * (speed - dx_prev)
    return x_prev + _alpha(min_cutoff + beta * np.abs(dx), dt) * (x - x_prev), dx


class OneEuroFilter:
    """Causal One-Euro filter over arrays of any (fixed) shape. Call with each new sample and its time.

    A sample whose time does not advance returns the previous output; a time going backwards or a
    shape change restarts the filter (e.g. a looped file).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        _check(OneEuroParams(min_cutoff, beta, d_cutoff))
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
        self._x, self._dx = _one_euro_step(x, self._x, self._dx, dt, max(float(scale), 1e-12), self.min_cutoff,
                                           self.beta, self.d_cutoff)
        self._t = float(t)
        return self._x.copy()


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


# A face's smoothed fields, flattened into one vector per track so one filter step covers them all:
# landmarks_2d (68 x 2), landmarks_3d (68 x 3), translation (3), rotation (3 x 3 entries).
_LM2, _LM3, _TRANS, _ROT = slice(0, 136), slice(136, 340), slice(340, 343), slice(343, 352)
_STATE_SIZE = 352
_FIELDS = ((_LM2, "landmarks_2d"), (_LM3, "landmarks_3d"), (_TRANS, "translation"), (_ROT, "rotation"))


class _TrackState:
    """One track's filter state: last output ``x``, last filtered speed ``dx`` (both (352,)), time ``t``."""

    __slots__ = ("x", "dx", "t")

    def __init__(self, x: np.ndarray, t: float):
        self.x, self.dx, self.t = x, np.zeros_like(x), t


class FaceSmoother:
    """Per-track One-Euro smoothing of a stream's faces (one instance per stream).

    ``apply(face, t)`` smooths ``face`` in place (and returns it) with the filter state of
    ``face.track_id``; a track id it has not seen starts fresh, so a new track never inherits another's
    state. Faces without a track id are returned unchanged (nothing ties them to a previous frame); a
    field a face lacks (None) is skipped. The filter is
    :class:`OneEuroFilter`'s step on all smoothed fields of all faces of a frame at once (per-element
    parameters and speed scales), so its cost hardly grows with the fields or the faces. A time that does
    not advance returns the previous output; one going backwards restarts the track (a looped file).
    Call :meth:`retain` with the live track ids now and then to free the state of ended tracks.
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
        self._tracks: dict[int, _TrackState] = {}
        per_field = ((_LM2, landmarks), (_LM3, landmarks), (_TRANS, translation), (_ROT, rotation))
        self._min_cutoff, self._beta, self._d_cutoff = (np.empty(_STATE_SIZE) for _ in range(3))
        for part, params in per_field:
            _check(params)
            self._min_cutoff[part], self._beta[part], self._d_cutoff[part] = (
                params.min_cutoff, params.beta, params.d_cutoff)

    def __len__(self) -> int:
        return len(self._tracks)

    def apply(self, face: Face, t: float) -> Face:
        self.apply_all([face], t)
        return face

    def apply_all(self, faces: list[Face], t: float, normals: np.ndarray | None = None) -> list[Face]:
        """Smooth every face of one frame (at time ``t``, seconds) in place, vectorised over the faces.
        Given the bundle's ``normals``, also the smoothed faces' ``landmarks_canonical`` (the canonical
        shape follows the smoothed 3D points: ``landmarks_3d = R @ L + t``) and occlusion mask."""
        self._write([self._filter(faces, t)], normals)
        return faces

    def _filter(self, faces: list[Face], t: float) -> tuple[list[Face], np.ndarray, bool]:
        """The filter step of one frame's tracked faces (updates the track states); returns (those faces,
        their smoothed (n, 352) state vectors, whether every face had every field)."""
        rows = [face for face in faces if face.track_id is not None]
        n, t = len(rows), float(t)
        states = [self._tracks.get(face.track_id) for face in rows]
        x = np.zeros((n, _STATE_SIZE))
        complete = True
        for i, (face, st) in enumerate(zip(rows, states)):
            for part, name in _FIELDS:
                value = getattr(face, name)
                if value is not None:
                    x[i, part] = value.reshape(-1)
                else:
                    complete = False
                    if st is not None:  # a field this face lacks keeps its state (zero speed)
                        x[i, part] = st.x[part]
        steady = [i for i, st in enumerate(states) if st is not None and t > st.t]
        out = x.copy()
        for i, (face, st) in enumerate(zip(rows, states)):
            if st is None or t < st.t:  # a new track, or time went back: start from this sample
                self._tracks[face.track_id] = _TrackState(x[i].copy(), t)
            elif t == st.t:  # no time has passed: the previous output
                out[i] = st.x
        if steady:
            size_3d = None if complete else np.array(
                [DEFAULT_FACE_SIZE_CM if rows[i].landmarks_3d is None else np.nan for i in steady])
            out[steady] = self._step([states[i] for i in steady], x[steady], t, size_3d)
        return rows, out, complete

    @staticmethod
    def _write(filtered: list[tuple[list[Face], np.ndarray, bool]], normals: np.ndarray | None) -> None:
        """Smoothed state vectors (of one or many frames) into their faces: rotation projected back onto
        SO(3), euler, and with ``normals`` the canonical shape and occlusion mask, in one vectorised step."""
        rows = [face for faces, _, _ in filtered for face in faces]
        if not rows:
            return
        n = len(rows)
        out = np.concatenate([o for _, o, _ in filtered]) if len(filtered) > 1 else filtered[0][1]
        complete = all(c for _, _, c in filtered)
        rotation = orthonormalize(out[:, _ROT].reshape(n, 3, 3))
        euler = euler_from_rotation(rotation).astype(np.float32)
        out32, rotation32 = out.astype(np.float32), rotation.astype(np.float32)
        canonical = visibility = None
        if normals is not None:
            visibility = visibility_mask(rotation32, normals, _VISIBLE_THRESHOLDS)
            if complete:
                lm3 = out[:, _LM3].reshape(n, -1, 3)
                canonical = ((lm3 - out[:, None, _TRANS]) @ rotation).astype(np.float32)
        for i, face in enumerate(rows):
            for part, name in _FIELDS[:3]:
                if getattr(face, name) is not None:
                    setattr(face, name, out32[i, part].reshape(getattr(face, name).shape))
            if face.rotation is not None:
                face.rotation, face.euler = rotation32[i], euler[i]
                if visibility is not None:
                    face.visibility = visibility[i]
            if canonical is not None:
                face.landmarks_canonical = canonical[i]

    def _step(self, states: list[_TrackState], x: np.ndarray, t: float, size_3d: np.ndarray | None) -> np.ndarray:
        """The One-Euro step of ``states`` on samples ``x`` (n, 352) at time ``t``; updates the states.
        Speeds are in face sizes per second: the 2D landmarks' box for 2D, the 3D landmarks' (x, y)
        box for 3D landmarks and translation (``size_3d`` where it is not NaN, when given); rotation
        entries are unitless."""
        n = len(states)
        xp = np.stack([st.x for st in states])
        dxp = np.stack([st.dx for st in states])
        dt = (t - np.array([st.t for st in states]))[:, None]
        lm2, lm3 = x[:, _LM2].reshape(n, -1, 2), x[:, _LM3].reshape(n, -1, 3)[..., :2]
        big, small = np.maximum.reduce, np.minimum.reduce  # ufuncs directly: a per-frame path
        extent_2d = big(big(lm2, axis=1) - small(lm2, axis=1), axis=-1)
        extent_3d = big(big(lm3, axis=1) - small(lm3, axis=1), axis=-1)
        if size_3d is not None:
            extent_3d = np.where(np.isnan(size_3d), extent_3d, size_3d)
        scale = np.ones((n, _STATE_SIZE))
        scale[:, _LM2] = np.maximum(extent_2d, 1.0)[:, None]
        scale[:, _LM3.start:_TRANS.stop] = np.maximum(extent_3d, 1.0)[:, None]
        out, dx = _one_euro_step(x, xp, dxp, dt, scale, self._min_cutoff, self._beta, self._d_cutoff)
        for i, st in enumerate(states):
            st.x, st.dx, st.t = out[i], dx[i], t
        return out

    def update(self, faces: list[Face], t: float, live_ids: Iterable[int], normals: np.ndarray | None = None
               ) -> list[Face]:
        """One frame: smooth ``faces`` (:meth:`apply_all`, with ``normals`` for the canonical shape and the
        occlusion mask of the smoothed pose); then free the state of tracks not in ``live_ids``."""
        self.update_frames([(faces, t, live_ids)], normals)
        return faces

    def update_frames(self, frames: Sequence[tuple[list[Face], float, Iterable[int]]],
                      normals: np.ndarray | None = None) -> None:
        """:meth:`update` of several frames of the stream in time order, ``(faces, t, live_ids)`` each: the
        filter steps one frame after the other, the rest (rotation projection, angles, canonical shape,
        occlusion) once for all of them. The landmark stage smooths a batch of frames this way."""
        filtered = []
        for faces, t, live_ids in frames:
            filtered.append(self._filter(faces, t))
            self.retain(live_ids)
        self._write(filtered, normals)

    def forget(self, track_id: int) -> None:
        """Drop one track's state (its id will not come back; a new id starts fresh anyway)."""
        self._tracks.pop(track_id, None)

    def retain(self, track_ids: Iterable[int]) -> None:
        """Keep only the state of ``track_ids`` (the tracker's live tracks)."""
        keep = set(track_ids)
        for tid in [t for t in self._tracks if t not in keep]:
            del self._tracks[tid]

    def reset(self) -> None:
        self._tracks.clear()
