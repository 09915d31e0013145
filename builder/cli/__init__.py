"""The `autoglm-trt` command line: one Typer sub-app per command group."""

from __future__ import annotations

import sys

import typer

from builder.cli import build_cmd, export_cmd, generate_cmd, model_cmd
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
app.command("build")(build_cmd.build)
app.command("generate")(generate_cmd.generate)


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
