"""The body of triton_repo's encoder models (vision_encoder, audio_encoder): each model.py names
its component and hands in Triton's `triton_python_backend_utils`, which exists only inside Triton.

One engine call per dynamically batched group, through runtime.multimodal's LocalEncoders (the
engine the manifest names, hash- and version-checked on load).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.manifest import Manifest
from runtime.multimodal import LocalEncoders


class EncoderModel:
    component: str  # "vision_encoder" | "audio_encoder", as in the manifest
    pb_utils = None  # the model.py's triton_python_backend_utils module

    def initialize(self, args: dict) -> None:
        pb = self.pb_utils
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        if not params.get("engines_dir"):
            raise pb.TritonModelException(f"{self.component}: set the engines_dir parameter")
        engines_dir = Path(params["engines_dir"])
        manifest = Manifest.load(engines_dir)
        if not manifest.precisions(self.component):
            raise pb.TritonModelException(f"{engines_dir} has no {self.component} engine")
        info = manifest.encoders[self.component]
        self.input, self.output = info["input"], info["output"]
        self.encoders = LocalEncoders(
            engines_dir, manifest, params.get("precision", "auto"), int(params.get("threads", 0))
        )
        # Load and run the engine once now, so a broken engine fails the load, not a request.
        self.encoders.encode(self.component, np.zeros((1, *info["input_shape"]), np.float32))

    def execute(self, requests: list) -> list:
        pb = self.pb_utils
        # Triton's dynamic batcher groups only requests of the same shape, so they concatenate.
        arrays = [pb.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        try:
            out = self.encoders.encode(self.component, np.concatenate(arrays))
        except Exception as error:  # any failure answers every request of the group, never hangs it
            message = pb.TritonError(f"{self.component} failed: {error}")
            return [pb.InferenceResponse(error=message) for _ in requests]
        splits = np.split(out, np.cumsum([len(a) for a in arrays])[:-1])
        return [pb.InferenceResponse([pb.Tensor(self.output, s)]) for s in splits]
