"""What ONNX Runtime's MatMulNBits costs on this machine, by bits and block size, at 1 and 8 rows.

    .venv/bin/python scripts/bench_matmul_nbits.py [--repeats 40] [--threads 2]

Each case is one graph of MatMulNBits nodes (`accuracy_level` 4, as the fused engines use) over
random weights in SmolLM2-135M's shapes: 30 layers' q/k/v, o, gate/up and down projections, each
its own weights, then the tied 49152 × 576 lm_head, so nothing stays in cache from one call to the
next, as in a decode step (these are ~85% of an int4 step's MatMulNBits time and bytes; the rest
is attention and norms). Cases are timed in interleaved blocks (builder/bench/stats.py); p50 ms
per call and the M 8 ÷ M 1 ratio are printed.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from builder.bench.stats import summarize, time_in_blocks

HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 576, 1536, 30, 49152
LAYER_SHAPES = [(HIDDEN, 960), (HIDDEN, HIDDEN), (HIDDEN, 2 * INTERMEDIATE), (INTERMEDIATE, HIDDEN)]  # (K, N)
LAYERS_AND_HEAD = LAYER_SHAPES * LAYERS + [(HIDDEN, VOCAB)]
CASES = {  # name: (bits, block size) of the layers, then of the lm_head
    "int4 b32, table int8 b128 (int4 default)": ((4, 32), (8, 128)),
    "int4 b32, table int4 b32": ((4, 32), (4, 32)),
    "int4 b64, table int8 b128": ((4, 64), (8, 128)),
    "int4 b128, table int8 b128": ((4, 128), (8, 128)),
    "int8 b128, table int8 b128 (int8)": ((8, 128), (8, 128)),
}


def graph(layers: tuple[int, int], head: tuple[int, int]) -> bytes:
    """MatMulNBits nodes reading x [M, 576] or x_wide [M, 1536] (by their K), one output each."""
    rng = np.random.default_rng(0)
    nodes, weights, outputs = [], [], []
    for i, (k, n) in enumerate(LAYERS_AND_HEAD):
        bits, block = head if n == VOCAB else layers
        blocks = -(-k // block)
        packed = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
        scales = rng.random(n * blocks, dtype=np.float32) * np.float32(0.01)
        weights += [numpy_helper.from_array(packed, f"w{i}"), numpy_helper.from_array(scales, f"s{i}")]
        source = "x" if k == HIDDEN else "x_wide"
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [source, f"w{i}", f"s{i}"],
                [f"y{i}"],
                domain="com.microsoft",
                K=k,
                N=n,
                bits=bits,
                block_size=block,
                accuracy_level=4,
            )
        )
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", n]))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", HIDDEN]),
        helper.make_tensor_value_info("x_wide", TensorProto.FLOAT, ["M", INTERMEDIATE]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "matmul_nbits", inputs, outputs, weights),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
        ir_version=10,
    )
    return model.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    runs = {}
    for name, (layers, head) in CASES.items():
        print(f"building {name}", flush=True)
        session = ort.InferenceSession(graph(layers, head), options, providers=["CPUExecutionProvider"])
        for rows in (1, 8):
            rng = np.random.default_rng(rows)
            feeds = {
                "x": rng.random((rows, HIDDEN), dtype=np.float32),
                "x_wide": rng.random((rows, INTERMEDIATE), dtype=np.float32),
            }
            runs[(name, rows)] = lambda s=session, f=feeds: s.run(None, f)
    print(f"timing {len(runs)} cases, {args.repeats} calls each", flush=True)
    samples = time_in_blocks({f"{n} M{m}": run for (n, m), run in runs.items()}, args.repeats)
    p50 = {key: summarize(samples[f"{key[0]} M{key[1]}"]).p50_ms for key in runs}
    print(f"ONNX Runtime {ort.__version__}, {args.threads} threads; p50 ms")
    width = max(map(len, CASES))
    print(f"{'case':<{width}} {'M 1':>8} {'M 8':>8} {'M8 / M1':>8}")
    for name in CASES:
        one, eight = p50[(name, 1)], p50[(name, 8)]
        print(f"{name:<{width}} {one:8.2f} {eight:8.2f} {eight / one:8.2f}")


if __name__ == "__main__":
    main()
