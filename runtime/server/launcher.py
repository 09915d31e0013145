"""`autoglm-trt serve`: tritonserver + the gateway in this process, ready line, clean shutdown.

Order: start Triton (own process group), load `llm` and the encoders the manifest has, start the
gateway (uvicorn) here, print where it listens and the start-up figures, serve. SIGINT/SIGTERM
stop the gateway, then Triton and its Python stubs; if Triton dies, the gateway stops too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.engine_loader import choose_component_precision
from runtime.errors import RuntimeUserError
from runtime.manifest import Manifest
from runtime.power.policy import PowerPolicy
from runtime.server.triton_process import TritonServer, replica_repository
from runtime.tool_format import format_for

if TYPE_CHECKING:
    from runtime.gateway.config import PowerSettings
    from runtime.server.prompting import PromptLimits

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENCODERS = ("vision_encoder", "audio_encoder")


class ShutdownRequested(Exception):
    """SIGINT or SIGTERM arrived."""


@dataclass(frozen=True)
class ServeConfig:
    engines_dir: Path
    precision: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    grpc_port: int = 8001  # 0 or busy: any free port
    api_key: str | None = None
    allow_local_media: bool = False
    repo_dir: Path = field(default=PROJECT_ROOT / "triton_repo")
    threads: int = 0
    kv_blocks: int = 0  # 0: room for 8 sequences of the engines' max_seq_len
    served_names: tuple[str, ...] = ()  # names clients pass as `model`; () = the engines' name
    jwt_jwks: str | None = None  # JSON Web Key Set (file or http(s) URL): bearer JWTs accepted
    jwt_issuer: str | None = None  # the `iss` those tokens must carry
    jwt_audience: str | None = None  # the `aud` they must carry
    ssl_certfile: Path | None = None  # PEM certificate (chain): the gateway serves HTTPS
    ssl_keyfile: Path | None = None  # its PEM private key, unencrypted
    replicas: int = 1  # copies of the llm model (llm, llm_1, …) and instances of each encoder
    devices: tuple[int, ...] = ()  # CUDA device per text decoder pipeline stage; (): the first
    power_policy: PowerPolicy | None = None  # switch precision and throttle by battery and heat
    sysfs_root: Path = Path("/sys")  # where the power policy reads batteries and temperatures
    power_interval_s: float = 2.0  # how often it reads them


def power_settings(manifest: Manifest, config: ServeConfig, precision: str) -> PowerSettings | None:
    from runtime.gateway.config import PowerSettings

    if config.power_policy is None:
        return None
    built = tuple(manifest.precisions("text_decoder"))
    return PowerSettings(config.power_policy, built, precision, config.sysfs_root, config.power_interval_s)


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """`preferred` when it can be bound, else one the OS picks."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeUserError(f"no free port on {host}")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def plan_models(manifest: Manifest, config: ServeConfig, precision: str) -> dict[str, dict[str, str]]:
    """Triton model -> its load-time parameters; encoders only when the manifest has them. With
    replicas, each llm copy lists them all (the gateway reads the list from `llm`), and threads
    left at 0 (all cores) are shared out among the replicas."""
    from runtime.gateway.replicas import REPLICAS_PARAMETER, replica_names

    threads = config.threads or (
        max(1, (os.cpu_count() or 1) // config.replicas) if config.replicas > 1 else 0
    )
    common = {"engines_dir": str(config.engines_dir.resolve()), "threads": str(threads)}
    llm = {**common, "precision": precision, "kv_blocks": str(config.kv_blocks)}
    if config.devices:
        llm["devices"] = ",".join(map(str, config.devices))
    names = replica_names("llm", config.replicas)
    extra = {REPLICAS_PARAMETER: ",".join(names)} if config.replicas > 1 else {}
    models = {name: {**llm, **extra} for name in names}
    for component in ENCODERS:
        built = manifest.precisions(component)
        if built:
            models[component] = {**common, "precision": precision if precision in built else "auto"}
    return models


def instance_groups(models: dict, replicas: int, gpus: int) -> dict[str, list[dict]]:
    """Triton `instance_group` per model when there are replicas ({}: the repository's). llm
    replica i is one instance on GPU i mod `gpus` (KIND_GPU; 0 GPUs: the CPU); each encoder has
    `replicas` instances on the CPU, or one on each GPU the replicas use (stateless: Triton's
    dynamic batcher spreads batches over them)."""
    if replicas <= 1:
        return {}
    cpu = [{"kind": "KIND_CPU", "count": 1}]
    llm = [m for m in models if m not in ENCODERS]  # llm, llm_1, …
    groups = {
        m: [{"kind": "KIND_GPU", "count": 1, "gpus": [i % gpus]}] if gpus else cpu for i, m in enumerate(llm)
    }
    used = sorted({i % gpus for i in range(len(llm))}) if gpus else []
    encoder = [{"kind": "KIND_GPU", "count": 1, "gpus": used}] if gpus else [{**cpu[0], "count": replicas}]
    return {**groups, **{m: encoder for m in models if m in ENCODERS}}


def replica_gpus(manifest: Manifest, precision: str) -> int:
    """GPUs the replicas spread over: those CUDA sees when the decoder engine is TensorRT, else 0."""
    if manifest.decoder_backend(precision) != "tensorrt":
        return 0
    from runtime.cuda import device_count

    return device_count()


def prompt_limits(manifest: Manifest, engines_dir: Path) -> PromptLimits | None:
    """What the llm model will measure prompts against, so the gateway refuses the same ones first."""
    from runtime.server.prompting import PromptLimits, longest_token_chars

    token_chars = longest_token_chars(engines_dir / manifest.tokenizer_dir)
    max_seq_len = manifest.decoder.get("max_seq_len")
    return PromptLimits(max_seq_len, token_chars) if token_chars and max_seq_len else None


def tls_files(certfile: Path | None, keyfile: Path | None) -> dict[str, str]:
    """uvicorn's ssl_certfile / ssl_keyfile, checked now (readable PEM files, the key unencrypted
    and matching the certificate) so a bad pair fails before Triton starts, not when the gateway binds."""
    if certfile is None and keyfile is None:
        return {}
    if certfile is None or keyfile is None:
        given, missing = (
            ("--ssl-certfile", "--ssl-keyfile") if certfile else ("--ssl-keyfile", "--ssl-certfile")
        )
        raise RuntimeUserError(
            f"{given} needs {missing}: HTTPS takes a certificate (chain) and its private key, both PEM files"
        )
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    pem = {}
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        try:
            pem[flag] = path.read_bytes()
        except OSError as error:
            raise RuntimeUserError(
                f"{flag} {path}: cannot read it ({error.strerror}); check the path"
            ) from None
    try:
        certificate = x509.load_pem_x509_certificates(pem["--ssl-certfile"])[0]
    except ValueError:
        raise RuntimeUserError(
            f"--ssl-certfile {certfile}: no PEM certificate in it (a '-----BEGIN CERTIFICATE-----' block)"
        ) from None
    try:
        key = load_pem_private_key(pem["--ssl-keyfile"], password=None)
    except TypeError:  # encrypted: uvicorn would prompt for the passphrase on the terminal
        raise RuntimeUserError(
            f"--ssl-keyfile {keyfile}: the key is encrypted; give it unencrypted "
            f"(openssl pkey -in {keyfile} -out key.pem) and keep that file private"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise RuntimeUserError(
            f"--ssl-keyfile {keyfile}: no PEM private key in it (a '-----BEGIN PRIVATE KEY-----' block)"
        ) from None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise RuntimeUserError(
            f"--ssl-keyfile {keyfile} is not the key of the certificate in --ssl-certfile {certfile}"
        )
    try:  # what uvicorn will do, for anything the checks above let through
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile, password=lambda: b"")
    except ssl.SSLError as error:
        raise RuntimeUserError(
            f"--ssl-certfile {certfile} / --ssl-keyfile {keyfile}: TLS refuses them ({error})"
        ) from None
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def serve(config: ServeConfig, say: Callable[[str], None] = print) -> None:
    import psutil
    import uvicorn

    from runtime.gateway.app import create_app
    from runtime.gateway.auth import jwt_verifier
    from runtime.gateway.config import GatewayConfig
    from runtime.gateway.http_protocol import GatewayH11Protocol

    # The gateway's warnings (refused requests, model-server failures) carry request ids: give
    # them a time and a source. Triton's side goes to its own log (printed at start).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("runtime.power").setLevel(logging.INFO)  # one line per power-policy switch
    verifier = jwt_verifier(config.jwt_jwks, config.jwt_issuer, config.jwt_audience)  # before any work
    tls = tls_files(config.ssl_certfile, config.ssl_keyfile)
    manifest = Manifest.load(config.engines_dir)
    precision = choose_component_precision(manifest, "text_decoder", config.precision)
    if not (config.repo_dir / "llm" / "config.pbtxt").is_file():
        raise RuntimeUserError(f"{config.repo_dir} is not the Triton model repository (no llm/config.pbtxt)")
    if config.port and free_port(config.host, config.port) != config.port:
        raise RuntimeUserError(
            f"port {config.port} on {config.host} is in use; pick another with --port (0 = any)"
        )
    port = config.port or free_port(config.host)
    log_path = Path(tempfile.mkdtemp(prefix="autoglm-trt-serve-")) / "tritonserver.log"
    models = plan_models(manifest, config, precision)
    repo_dir = config.repo_dir
    if config.replicas > 1:  # llm_1, … are llm's directory under other names
        copies = {name: "llm" for name in models if name != "llm" and name not in ENCODERS}
        repo_dir = replica_repository(config.repo_dir, copies, log_path.parent / "model_repository")
    gpus = replica_gpus(manifest, precision) if config.replicas > 1 else 0
    groups = instance_groups(models, config.replicas, gpus)
    triton = TritonServer(repo_dir, free_port("127.0.0.1", config.grpc_port), log_path)
    previous = {sig: signal.signal(sig, _raise_shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
    clean = False  # the temporary folder (Triton's log, replica copies) outlives only a failure
    try:
        started = triton.start()
        for name, parameters in models.items():
            triton.load(name, parameters, groups.get(name))
        gateway = GatewayConfig(
            triton_url=triton.url,
            model_id=manifest.model.get("name", config.engines_dir.name),
            encoder_models=tuple(m for m in models if m in ENCODERS),
            served_names=config.served_names,
            api_key=config.api_key,
            jwt=verifier,
            allow_local_media=config.allow_local_media,
            prompt_limits=prompt_limits(manifest, config.engines_dir),
            tool_format=format_for(manifest.model.get("family", "")).name,
            power=power_settings(manifest, config, precision),
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(gateway),
                host=config.host,
                port=port,
                log_level="warning",
                http=GatewayH11Protocol,
                h11_max_incomplete_event_size=gateway.max_header_bytes,
                **tls,
            )
        )

        def ready() -> None:
            loads = ", ".join(f"{m} {s:.1f} s" for m, s in triton.load_seconds.items())
            names = " ".join(gateway.names)
            say(f"autoglm-trt serve: {names} ({precision}) from {config.engines_dir}")
            say(f"  tritonserver  grpc://{triton.url}  live in {started:.1f} s; models loaded: {loads}")
            say(
                f"  memory        tritonserver + stubs {_mib(triton.memory_bytes())}, "
                f"gateway {_mib(psutil.Process().memory_info().rss)}"
            )
            say(f"  triton log    {log_path}")
            scheme = "https" if tls else "http"
            say(f"  OpenAI API    {scheme}://{config.host}:{port}/v1  (also /health, /metrics)")
            say("ready; Ctrl-C to stop")

        threading.Thread(target=_watch, args=(triton, server, say), daemon=True).start()
        asyncio.run(_run_gateway(server, ready))
        if not triton.alive():
            raise RuntimeUserError(f"tritonserver stopped unexpectedly:\n{triton.log_tail()}")
        clean = True
    except ShutdownRequested:
        clean = True
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        triton.stop()
        if clean:
            shutil.rmtree(log_path.parent, ignore_errors=True)
        else:
            say(f"triton log kept: {log_path}")
        say("stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_shutdown(signum, frame) -> None:
    raise ShutdownRequested(signal.Signals(signum).name)


async def _run_gateway(server, ready: Callable[[], None]) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        ready()
    await task


def _watch(triton: TritonServer, server, say: Callable[[str], None]) -> None:
    while not server.should_exit:
        if not triton.alive():
            say("tritonserver exited; stopping the gateway")
            server.should_exit = True
            return
        time.sleep(0.5)
