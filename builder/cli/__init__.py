"""The `autoglm-trt` command line: one Typer sub-app per command group."""

from __future__ import annotations

import errno
import sys

import typer

from builder.cli import bench_cmd, build_cmd, calibrate_cmd, export_cmd, generate_cmd, model_cmd, serve_cmd
from runtime.errors import UserError

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


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(error: BaseException) -> OSError | None:
    """The out-of-space OSError behind `error`. Exporters wrap it in their own exceptions, and
    numpy's writers report a full disk as a bare "problem writing element" without an errno."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and (
            error.errno in DISK_FULL or (error.errno is None and "problem writing" in str(error))
        ):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def main() -> None:
    try:
        app()
    except Exception as error:
        full = disk_full(error)
        if full is None and not isinstance(error, UserError):
            raise
        # A user-fixable problem: one line that says what to do, no traceback. Steps write under
        # temporary names, so a full disk leaves nothing half-written behind.
        message = error
        if full is not None:
            where = f" writing {full.filename}" if full.filename else ""
            message = (
                f"out of disk space{where} ({full.strerror or full}); free space on the disk of "
                "--out / --work-dir, or point them at another disk"
            )
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
