"""The `autoglm-trt` command line: one Typer sub-app per command group."""

from __future__ import annotations

import sys

import typer

from builder.cli import bench_cmd, build_cmd, calibrate_cmd, export_cmd, generate_cmd, model_cmd, serve_cmd
from builder.errors import BuildError
from runtime.errors import RuntimeUserError

app = typer.Typer(
    name="autoglm-trt",
    help="Export, calibrate, build and serve GLM-4.1V-family models (ONNX Runtime or TensorRT engines).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(model_cmd.app, name="model")
app.command("export")(export_cmd.export)
app.command("calibrate")(calibrate_cmd.calibrate)
app.command("build")(build_cmd.build)
app.command("generate")(generate_cmd.generate)
app.command("serve")(serve_cmd.serve)
app.add_typer(bench_cmd.app, name="bench")


def main() -> None:
    try:
        app()
    except (BuildError, RuntimeUserError) as error:
        # A user-fixable problem: one line that says what to do, no traceback.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
