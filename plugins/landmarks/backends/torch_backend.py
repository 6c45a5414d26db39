"""PyTorch backend: ``model.safetensors`` in the transformer definition, on CPU or CUDA.

CPU: fp32 eager, ``torch.inference_mode``. CUDA: fp16/bf16 autocast (weights stay fp32, outputs are
returned as fp32), one CUDA graph per batch bucket (1, 2, 4, ..., max_batch; a call is padded to the
next bucket, so a handful of graphs serve every size), pinned host staging buffers, and GPU-side
cropping (:func:`crop_batch`: ``grid_sample`` with the crop affine, mirroring
:func:`engine.crop.warp_crop` including its box pre-filter) so only the uint8 frame is uploaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from engine.bundle import Bundle
from engine.crop import box_factor
from plugins.landmarks.backends import BackendError, run_chunked
from plugins.landmarks.transformer import create_model

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def buckets(max_batch: int) -> list[int]:
    """Batch sizes with a CUDA graph: powers of two below ``max_batch``, and ``max_batch``."""
    out, n = [], 1
    while n < max_batch:
        out.append(n)
        n *= 2
    return [*out, max_batch]


def crop_batch(images: Sequence[torch.Tensor], faces: Sequence[tuple[int, np.ndarray]], size: int,
               fill: float = 0.0) -> torch.Tensor:
    """Device-side :func:`engine.crop.warp_crop` for many faces: ``images`` are (3, H, W) float
    tensors (0..255, RGB), ``faces`` (image index, (3, 3) image->crop affine). Returns (N, 3, S, S)
    0..255 rounded like warp_crop's uint8 output (same box pre-filter when downscaling > 2x)."""
    device = images[0].device
    out = torch.empty((len(faces), 3, size, size), device=device, dtype=torch.float32)
    grid = torch.arange(size, device=device, dtype=torch.float64)
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    sources: dict[tuple[int, int], torch.Tensor] = {}
    groups: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for j, (i, M) in enumerate(faces):
        Minv = np.linalg.inv(np.asarray(M, np.float64))
        factor = box_factor(Minv)  # the same pre-filter as warp_crop
        if factor > 1:
            down = np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1]])
            Minv = down @ Minv
        groups.setdefault((i, factor), []).append((j, Minv))
    for (i, factor), members in groups.items():
        src = sources.get((i, factor))
        if src is None:
            src = images[i][None].float()
            if factor > 1:  # edge-pad to a multiple, then box-average (as warp_crop does)
                ph, pw = -src.shape[2] % factor, -src.shape[3] % factor
                if ph or pw:
                    src = F.pad(src, (0, pw, 0, ph), mode="replicate")
                # block means rounded to uint8 as OpenCV's INTER_AREA rounds them in warp_crop: half up
                # at factor 2, half to even at larger factors (only 4, 6, ... can hit .5 exactly)
                src = F.avg_pool2d(src, factor)
                src = torch.floor(src + 0.5) if factor == 2 else torch.round(src)
            sources[(i, factor)] = src
        H, W = src.shape[2:]
        m = torch.as_tensor(np.stack([mi for _, mi in members]), device=device, dtype=torch.float64)
        xs = m[:, 0, 0, None, None] * gx + m[:, 0, 1, None, None] * gy + m[:, 0, 2, None, None]
        ys = m[:, 1, 0, None, None] * gx + m[:, 1, 1, None, None] * gy + m[:, 1, 2, None, None]
        # align_corners=False: -1 is the outer edge of pixel 0, i.e. x = -0.5 with integer centres
        g = torch.stack([(xs + 0.5) * 2 / W - 1, (ys + 0.5) * 2 / H - 1], dim=-1).float()
        sampled = F.grid_sample(src.expand(len(members), -1, -1, -1) - fill, g, mode="bilinear",
                                padding_mode="zeros", align_corners=False) + fill
        out[[j for j, _ in members]] = sampled
    return torch.clamp(torch.floor(out + 0.5), 0, 255)


class TorchBackend:
    name = "torch"

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", max_batch: int = 32,
                 intra_op_threads: int | None = None, cuda_graphs: bool = True):
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("backend 'torch' with device 'cuda': torch sees no CUDA GPU "
                               f"(torch {torch.__version__}); install a CUDA build (pip install .[gpu]) or use device = 'cpu'")
        if device == "cpu" and precision != "fp32":
            raise BackendError(f"precision {precision!r} is for CUDA; on CPU the torch backend runs fp32")
        if intra_op_threads:
            torch.set_num_threads(int(intra_op_threads))  # process-wide: torch has one intra-op pool
        cfg = {k: v for k, v in bundle.manifest.model.items() if k != "architecture"}
        self.model = create_model(cfg).eval()
        state = {k: v.float() for k, v in load_file(str(bundle.weights_path)).items()}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BackendError(f"{bundle.weights_path}: weights do not fit manifest.json model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]}); re-export the bundle")
        self.device, self.precision, self.max_batch = device, precision, int(max_batch)
        self.dtype = DTYPES[precision]
        self.size = bundle.input_size
        spec = bundle.manifest.input
        self.torch_device = torch.device(device)
        self.model.to(self.torch_device)
        self.mean = torch.tensor(spec.mean, device=self.torch_device).view(1, 3, 1, 1) / spec.scale
        self.std = torch.tensor(spec.std, device=self.torch_device).view(1, 3, 1, 1) / spec.scale
        self.use_graphs = bool(cuda_graphs) and device == "cuda"
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._pinned = None
        if device == "cuda":
            self._pinned = torch.empty((self.max_batch, 3, self.size, self.size), dtype=torch.float32).pin_memory()

    # ------------------------------------------------------------ core

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.device == "cuda" and self.dtype != torch.float32:
            with torch.autocast("cuda", dtype=self.dtype):
                out = self.model(x)
        else:
            out = self.model(x)
        return {k: v.float() for k, v in out.items()}

    def _graph(self, n: int):
        if n not in self._graphs:
            static_in = torch.zeros((n, 3, self.size, self.size), device=self.torch_device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():  # warm-up outside the graph
                for _ in range(2):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = self._forward(static_in)
            self._graphs[n] = (graph, static_in, static_out)
        return self._graphs[n]

    def _run_device(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """(n <= max_batch, 3, S, S) normalised input already on the device."""
        n = len(x)
        if self.use_graphs:
            bucket = next(b for b in buckets(self.max_batch) if b >= n)
            graph, static_in, static_out = self._graph(bucket)
            static_in[:n].copy_(x)
            if bucket > n:
                static_in[n:].zero_()
            graph.replay()
            return {k: v[:n].cpu().numpy() for k, v in static_out.items()}
        with torch.inference_mode():
            out = self._forward(x)
        return {k: v.cpu().numpy() for k, v in out.items()}

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.device == "cuda":
            staged = self._pinned[: len(x)]
            staged.copy_(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
            return self._run_device(staged.to(self.torch_device, non_blocking=True))
        return self._run_device(torch.from_numpy(np.ascontiguousarray(x, np.float32)))

    # ------------------------------------------------------------ public

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return run_chunked(self._run, x, self.max_batch)

    def infer_crops(self, images: Sequence[np.ndarray], faces: Sequence[tuple[int, np.ndarray]]) -> dict[str, np.ndarray]:
        """Crop on the device and infer: ``images`` HxWx3 uint8 RGB frames, ``faces`` (image index,
        image->crop affine from :func:`engine.crop.crop_matrix`). Same result as warp_crop +
        Bundle.preprocess + infer, without uploading per-face crops."""
        used = sorted({i for i, _ in faces})
        tensors: list[torch.Tensor | None] = [None] * len(images)
        for i in used:
            t = torch.from_numpy(np.ascontiguousarray(images[i]))
            if self.device == "cuda":
                t = t.pin_memory().to(self.torch_device, non_blocking=True)
            tensors[i] = t.permute(2, 0, 1).float()
        parts = []
        for k in range(0, len(faces), self.max_batch):
            chunk = faces[k : k + self.max_batch]
            crops = crop_batch(tensors, chunk, self.size)  # type: ignore[arg-type]
            parts.append(self._run_device((crops - self.mean) / self.std))
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def close(self) -> None:
        self._graphs.clear()
        self.model = None
