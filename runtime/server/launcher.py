"""`autoglm-trt serve`: tritonserver + the gateway in this process, ready line, clean shutdown.

Order: start Triton (own process group), load `llm` and the encoders the manifest has, start the
gateway (uvicorn) here, print where it listens and the start-up figures, serve. SIGINT/SIGTERM
stop the gateway, then Triton and its Python stubs; if Triton dies, the gateway stops too.
"""

from __future__ import annotations

import asyncio
import logging
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
from runtime.server.triton_process import TritonServer

if TYPE_CHECKING:
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
    """Triton model -> its load-time parameters; encoders only when the manifest has them."""
    common = {"engines_dir": str(config.engines_dir.resolve()), "threads": str(config.threads)}
    models = {"llm": {**common, "precision": precision, "kv_blocks": str(config.kv_blocks)}}
    for component in ENCODERS:
        built = manifest.precisions(component)
        if built:
            models[component] = {**common, "precision": precision if precision in built else "auto"}
    return models


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
    triton = TritonServer(config.repo_dir, free_port("127.0.0.1", config.grpc_port), log_path)
    previous = {sig: signal.signal(sig, _raise_shutdown) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        started = triton.start()
        models = plan_models(manifest, config, precision)
        for name, parameters in models.items():
            triton.load(name, parameters)
        gateway = GatewayConfig(
            triton_url=triton.url,
            model_id=manifest.model.get("name", config.engines_dir.name),
            encoder_models=tuple(m for m in models if m != "llm"),
            served_names=config.served_names,
            api_key=config.api_key,
            jwt=verifier,
            allow_local_media=config.allow_local_media,
            prompt_limits=prompt_limits(manifest, config.engines_dir),
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
    except ShutdownRequested:
        pass
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        triton.stop()
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
