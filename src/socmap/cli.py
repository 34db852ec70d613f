"""The ``socmap`` command line: a thin layer over the Python API (every command is a function call)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from socmap import __version__
from socmap.config import SocmapConfig
from socmap.errors import SocmapError

app = typer.Typer(
    name="socmap",
    help="Learn soil organic carbon (SOC) from dated soil samples and covariate raster stacks, and map it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"socmap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """socmap: soil organic carbon from samples + multi-year covariate stacks, mapped over a region."""


OutOption = Annotated[
    Path, typer.Option("--out", help="Output folder (created; refused if it exists and is not empty).")
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace an existing output folder (only once the new one is complete)."
    ),
]


@app.command()
def synth(
    out: OutOption,
    resolution: Annotated[
        float,
        typer.Option(help="Pixel size in metres of the covariate grid (EPSG:25832), e.g. 1000, 250, 100."),
    ] = 1000.0,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical data.")] = 0,
    n_locations: Annotated[
        int,
        typer.Option(help="Unique sample locations (40% LUCAS-like 2 km grid, 60% clustered agency plots)."),
    ] = 5000,
    region: Annotated[
        Path | None,
        typer.Option(help="Region polygon (GeoJSON/GeoPackage); default: the embedded Bavaria boundary."),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Write the synthetic Bavaria data set: covariate GeoTIFF stacks 2002-2023, samples.csv, truth, region.

    OC is a documented nonlinear function of a 5x5 window of covariates over the sample year and the 4 years
    before it, plus multiplicative noise; truth.json gives the best validation R² any model can reach.
    """
    from socmap.synth import synthesize

    with console.status("synthesizing") as status:
        result = synthesize(
            out,
            resolution=resolution,
            seed=seed,
            n_locations=n_locations,
            region=region,
            overwrite=overwrite,
            progress=lambda msg: status.update(f"synthesizing: {msg}"),
        )
    typer.echo(
        f"wrote {result.out}: {result.n_rasters} rasters "
        f"({result.width} x {result.height} px at {resolution:g} m), "
        f"{result.n_samples} samples at {result.n_locations} locations, R² ceiling {result.r2_ceiling:.3f} "
        f"({result.seconds:.1f} s)"
    )


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see configs/).")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set windows.size=7 (repeatable)."),
]


def _load(
    config: Path | None, sets: list[str] | None, extra: dict[str, object] | None = None
) -> SocmapConfig:
    from socmap.config import load_config, parse_override

    overrides: dict[str, object] = dict(parse_override(s) for s in sets or [])
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return load_config(config, overrides)


@app.command()
def prepare(
    config: ConfigOption = None,
    out: Annotated[
        Path, typer.Option("--out", help="Prepared folder: windows.npy, samples.parquet, meta.json.")
    ] = Path("prepared"),
    sets: SetOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Read samples and covariate rasters, cut [N, C, H, W, T] windows, and write a prepared folder.

    Re-running with the same config and unchanged inputs reuses the folder. Drops are reported by reason.
    """
    from socmap.windows import drops_summary
    from socmap.windows import prepare as run_prepare

    cfg = _load(config, sets)
    with console.status("preparing") as status:
        data, reused = run_prepare(cfg, out, overwrite=overwrite, progress=lambda m: status.update(m))
    meta = data.meta
    if reused:
        typer.echo(f"{out} is up to date (same config and inputs); reused")
    for warning in meta["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    n, c, h, w, t = meta["shape"]
    typer.echo(f"{drops_summary(meta)}")
    typer.echo(f"wrote {out}: windows [{n}, {c}, {h}, {w}, {t}] for bands {', '.join(meta['bands'])}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo's data and results.")] = Path(
        "demo-output"
    ),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing demo results.")] = True,
) -> None:
    """Run the whole pipeline on the embedded synthetic Bavaria data set.

    Stages available in this version: synthesize the data set into OUT/data.
    """
    from socmap.synth import synthesize

    result = synthesize(out / "data", overwrite=overwrite)
    typer.echo(
        f"demo data set: {result.out} ({result.n_samples} samples, R² ceiling {result.r2_ceiling:.3f})"
    )


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except SocmapError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
