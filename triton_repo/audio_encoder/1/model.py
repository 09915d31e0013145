"""Triton adapter for the audio encoder: one engine call per dynamically batched group.

Log-mel features [N, mel, frames] float32 -> embeddings [N, T, hidden] float32, through runtime.multimodal's
LocalEncoders (the engine named by the manifest, hash- and version-checked on load).
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from builder.manifest import Manifest
from runtime.multimodal import LocalEncoders

COMPONENT = "audio_encoder"
INPUT, OUTPUT = "input_features", "embeddings"


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        if not params.get("engines_dir"):
            raise pb_utils.TritonModelException(f"{COMPONENT}: set the engines_dir parameter")
        engines_dir = Path(params["engines_dir"])
        manifest = Manifest.load(engines_dir)
        if not manifest.precisions(COMPONENT):
            raise pb_utils.TritonModelException(f"{engines_dir} has no {COMPONENT} engine")
        self.encoders = LocalEncoders(
            engines_dir, manifest, params.get("precision", "auto"), int(params.get("threads", 0))
        )
        # Load and run the engine once now, so a broken engine fails the load, not a request.
        shape = manifest.encoders[COMPONENT]["input_shape"]
        self.encoders.encode_audio(np.zeros((1, *shape), np.float32))

    def execute(self, requests):
        # Triton's dynamic batcher groups only requests of the same shape, so they concatenate.
        arrays = [pb_utils.get_input_tensor_by_name(r, INPUT).as_numpy() for r in requests]
        try:
            out = self.encoders.encode_audio(np.concatenate(arrays))
        except Exception as error:
            message = pb_utils.TritonError(f"{COMPONENT} failed: {error}")
            return [pb_utils.InferenceResponse(error=message) for _ in requests]
        splits = np.split(out, np.cumsum([len(a) for a in arrays])[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, s)]) for s in splits]
