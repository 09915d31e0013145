"""`autoglm-trt serve`: Triton Inference Server plus the OpenAI-compatible gateway."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from builder.cli.options import Devices, parse_devices

DEFAULT_ENGINES = Path("engines/smollm2-135m")


def serve(
    engines: Annotated[Path, typer.Option(help="Engines directory (engines/NAME).")] = DEFAULT_ENGINES,
    precision: Annotated[
        str, typer.Option(help="fp32, fp16, int8, int4 or auto (int4 > int8 > fp16 > fp32).")
    ] = "auto",
    host: Annotated[
        str, typer.Option(help="Address the HTTP gateway binds; 0.0.0.0 exposes it.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="HTTP port of the gateway; 0 = any free.")
    ] = 8000,
    grpc_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Triton's gRPC port (loopback); busy or 0 = any free.")
    ] = 8001,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="AUTOGLM_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/*."),
    ] = None,
    jwt_jwks: Annotated[
        str | None,
        typer.Option(
            help="Accept OAuth2 bearer JWTs (RS256/ES256) signed by this JSON Web Key Set, a file "
            "or an https:// URL; needs --jwt-issuer and --jwt-audience. With --api-key, either works."
        ),
    ] = None,
    jwt_issuer: Annotated[str | None, typer.Option(help="The `iss` a bearer JWT must carry.")] = None,
    jwt_audience: Annotated[str | None, typer.Option(help="The `aud` a bearer JWT must carry.")] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="Serve HTTPS with this PEM certificate (chain); needs --ssl-keyfile.")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option(help="The certificate's PEM private key (unencrypted).")
    ] = None,
    allow_local_media: Annotated[
        bool, typer.Option(help="Let image_url / input_audio name files on this machine.")
    ] = False,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads per engine; 0 = all.")] = 0,
    kv_blocks: Annotated[int, typer.Option(min=0, help="KV pool blocks; 0 = 8 full-length sequences.")] = 0,
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            help="Copies of the LLM (each with its own KV pool) and instances of each encoder; "
            "a conversation's turns stay on one copy.",
        ),
    ] = 1,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option(
            help="A name clients pass as `model` (repeatable, e.g. autoglm-phone-9b); "
            "default: the engines' model name."
        ),
    ] = None,
    repository: Annotated[
        Path | None, typer.Option(help="Triton model repository; default: this project's triton_repo/.")
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            help="Hash every engine file before starting, even those verified since they last changed."
        ),
    ] = False,
    power_policy: Annotated[
        str,
        typer.Option(
            help="off, auto (precision by battery: fp16 > 70%, int8 30-70%, int4 < 30%; throttle above "
            "65 °C, pause above 80 °C) or a TOML file overriding those settings."
        ),
    ] = "off",
    sysfs_root: Annotated[
        Path, typer.Option(help="Where the power policy reads power_supply and thermal sensors.")
    ] = Path("/sys"),
    power_interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between the power policy's sensor readings.")
    ] = 2.0,
    dynamo: Annotated[
        bool,
        typer.Option(
            "--dynamo",
            help="Serve on NVIDIA Dynamo instead: its OpenAI frontend on --port with KV-aware routing "
            "over --workers engine workers (needs the `dynamo` extra).",
        ),
    ] = False,
    workers: Annotated[int, typer.Option(min=1, help="Engine workers behind --dynamo.")] = 2,
    devices: Devices = None,
) -> None:
    """Serve built engines: tritonserver (gRPC) and the OpenAI API (HTTP) until Ctrl-C or SIGTERM."""
    from runtime.errors import RuntimeUserError
    from runtime.power.policy import load_policy
    from runtime.server.launcher import PROJECT_ROOT, ServeConfig
    from runtime.server.launcher import serve as run

    policy = load_policy(power_policy)  # a bad file or value: one error line, before anything starts
    placed = parse_devices(devices)
    if placed and (replicas > 1 or dynamo):
        raise RuntimeUserError(
            "--devices places one server's pipeline stages; with --replicas or --dynamo each copy "
            "takes the devices it is given by Triton or Dynamo: drop --devices"
        )
    names = tuple(dict.fromkeys(served_model_name or ()))  # repeated names count once
    bad = [name for name in names if not name or any(c.isspace() for c in name)]
    if bad:
        raise RuntimeUserError(
            f"--served-model-name {bad[0]!r}: a model name must be non-empty, without spaces"
        )
    if verify:  # here, before Triton starts: its models' loads then find every file verified
        from runtime.engine_loader import verify_engines
        from runtime.manifest import Manifest

        verify_engines(Manifest.load(engines), engines, precision)
    if dynamo:
        from runtime.dynamo.launcher import DynamoServeConfig, check_gateway_only_options
        from runtime.dynamo.launcher import serve as run_dynamo

        gateway_only = {
            "--api-key": api_key,
            "--jwt-jwks": jwt_jwks,
            "--ssl-certfile": ssl_certfile,
            "--power-policy": policy,
        }
        check_gateway_only_options(gateway_only, names)
        config = DynamoServeConfig(engines, workers, port, host, precision, threads, kv_blocks or None)
        config = replace(config, served_model_name=names[0] if names else None)
        raise typer.Exit(run_dynamo(config, say=lambda line: print(line, flush=True)))
    run(
        ServeConfig(
            engines_dir=engines,
            precision=precision,
            host=host,
            port=port,
            grpc_port=grpc_port,
            api_key=api_key,
            jwt_jwks=jwt_jwks,
            jwt_issuer=jwt_issuer,
            jwt_audience=jwt_audience,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            allow_local_media=allow_local_media,
            threads=threads,
            kv_blocks=kv_blocks,
            replicas=replicas,
            devices=placed,
            served_names=names,
            repo_dir=repository or PROJECT_ROOT / "triton_repo",
            power_policy=policy,
            sysfs_root=sysfs_root,
            power_interval_s=power_interval,
        ),
        say=lambda line: print(line, flush=True),
    )
