"""fp16 weight storage for a bundle's ``model.onnx``.

The graph still computes in fp32 (inputs, outputs and activations): each large fp32 initializer is stored
as fp16 and widened by a ``Cast`` node that onnxruntime (and TensorRT's parser) fold into a constant when
the session is built. That halves the file, at no run-time cost, and the weights are the same fp16 values
``model.safetensors`` holds. Tools that rewrite weights (the INT8 Q/DQ quantiser) take the fp32 form
(``widen_weights``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SUFFIX = "__fp16"
MIN_ELEMENTS = 256  # small tensors (biases, norms, shape constants) stay fp32: no gain, more nodes


def store_weights_fp16(model: onnx.ModelProto) -> int:
    """In place: fp32 initializers with >= MIN_ELEMENTS values -> fp16 + Cast. Returns how many."""
    graph, casts = model.graph, []
    graph_inputs = {i.name for i in graph.input}  # an initializer that is also an input can be fed: leave it
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_ELEMENTS or init.name in graph_inputs:
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name + SUFFIX))
        casts.append(helper.make_node("Cast", [name + SUFFIX], [name], to=TensorProto.FLOAT, name=name + "_widen"))
    nodes = casts + list(graph.node)  # the casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


def widen_weights(model: onnx.ModelProto) -> int:
    """In place, the inverse of ``store_weights_fp16``: fp16 initializer + Cast -> fp32 initializer."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    keep, widened = [], 0
    for node in graph.node:
        src = inits.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if src is None or src.data_type != TensorProto.FLOAT16 or not node.input[0].endswith(SUFFIX):
            keep.append(node)
            continue
        src.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(src).astype(np.float32), node.output[0]))
        widened += 1
    del graph.node[:]
    graph.node.extend(keep)
    return widened


def fp32_copy(path: str | Path, out_dir: str | Path) -> Path:
    """``path`` itself when its weights are fp32, else an fp32-weight copy written into ``out_dir``."""
    model = onnx.load(str(path))
    if not widen_weights(model):
        return Path(path)
    out = Path(out_dir) / (Path(path).stem + ".fp32.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out
