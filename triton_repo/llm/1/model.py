"""Triton adapter for the LLM: parse the request tensors, hand them to runtime's LLMService, stream.

Decoupled: `execute` returns at once; the service's scheduler thread sends one response per token
through the request's response sender and always ends with the FINAL flag (also on errors and
cancellation). The wire format is documented in runtime/server/wire.py.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from runtime.server.llm_service import LLMService, ServiceConfig, instance_devices
from runtime.server.wire import ERROR_USER, OP_STATS, GenerateRequest, WireError

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
ENCODER_BATCH = 8  # the encoders' max_batch_size


def _bytes_tensor(name, text):
    return pb_utils.Tensor(name, np.array([text.encode("utf-8")], dtype=np.object_))


def _response(content="", reasoning="", token_ids=(), finish_reason="", info=None):
    return pb_utils.InferenceResponse(
        [
            _bytes_tensor("content", content),
            _bytes_tensor("reasoning", reasoning),
            pb_utils.Tensor("token_ids", np.asarray(token_ids, dtype=np.int64)),
            _bytes_tensor("finish_reason", finish_reason),
            _bytes_tensor("info", json.dumps(info or {})),
        ]
    )


class TritonSink:
    """A ResponseSink over one request's response sender."""

    def __init__(self, request):
        self.request = request
        self.sender = request.get_response_sender()

    def send(self, delta, info):
        final = delta.finish_reason is not None
        response = _response(delta.content, delta.reasoning, delta.token_ids, delta.finish_reason or "", info)
        self.sender.send(response, flags=FINAL if final else 0)

    def fail(self, message):
        self.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)

    def is_cancelled(self):
        return self.request.is_cancelled()

    def close(self):
        self.sender.send(flags=FINAL)


class TritonEncoders:
    """MediaEncoders (runtime.multimodal's protocol) calling the encoder models through BLS."""

    def _run(self, model, input_name, batch):
        outputs = []
        for start in range(0, len(batch), ENCODER_BATCH):
            chunk = np.ascontiguousarray(batch[start : start + ENCODER_BATCH], dtype=np.float32)
            request = pb_utils.InferenceRequest(
                model_name=model,
                inputs=[pb_utils.Tensor(input_name, chunk)],
                requested_output_names=["embeddings"],
            )
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"{model}: {response.error().message()}")
            outputs.append(pb_utils.get_output_tensor_by_name(response, "embeddings").as_numpy())
        return np.concatenate(outputs)

    def encode_images(self, pixel_values):
        return self._run("vision_encoder", "pixel_values", pixel_values)

    def encode_audio(self, features):
        return self._run("audio_encoder", "input_features", features)


def _optional_bytes(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return [] if tensor is None else [bytes(item) for item in tensor.as_numpy().reshape(-1)]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("llm must be decoupled (model_transaction_policy)")
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        if not params.get("engines_dir"):
            raise pb_utils.TritonModelException("llm: set the engines_dir parameter to an engines directory")
        self.service = LLMService(
            ServiceConfig(
                engines_dir=Path(params["engines_dir"]),
                precision=params.get("precision", "auto"),
                threads=int(params.get("threads", 0)),
                kv_blocks=int(params.get("kv_blocks", 0)) or None,
                devices=instance_devices(
                    Path(params["engines_dir"]),
                    params.get("devices", ""),
                    args.get("model_instance_kind", ""),
                    int(args.get("model_instance_device_id", 0)),
                ),
            )
        )
        self.encoders = TritonEncoders()

    def execute(self, requests):
        for request in requests:
            sink = TritonSink(request)
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "request").as_numpy().reshape(-1)[0]
                wire = GenerateRequest.from_json(raw)
            except WireError as error:
                sink.fail(ERROR_USER + str(error))
                continue
            if wire.op == OP_STATS:
                stats = self.service.stats()
                info = {**stats.__dict__, "precision": self.service.precision}
                sink.sender.send(_response(finish_reason="stats", info=info), flags=FINAL)
                continue
            images, audios = _optional_bytes(request, "images"), _optional_bytes(request, "audios")
            self.service.submit(wire, sink, images, audios, self.encoders)
        return None

    def finalize(self):
        self.service.close()
