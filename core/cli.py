"""``metric-cd``: unsupervised change detection from the command line (no QGIS needed).

Prints a progress bar on stderr and a one-line JSON summary on stdout; exits 0 on success,
1 with a one-line error on bad input, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence, Tuple

from .config import (
    BACKBONES,
    DEVICES,
    MODES,
    PRESETS,
    RESAMPLINGS,
    THRESHOLD_RULES,
    MetricCDConfig,
    PipelineOptions,
)
from .errors import Cancelled, MetricCDError


def _bands(text: str) -> Tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bands must be comma-separated 1-based numbers such as 1,2,3 (got {text!r})"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"band numbers start at 1 (got {text!r})")
    return values


def _threshold(text: str):
    if text in THRESHOLD_RULES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"threshold must be 'otsu', 'otsu-logit' or a number in (0, 1), got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="metric-cd",
        description="Unsupervised change detection between two co-registered rasters with "
        "Metric-CD (Bandara & Patel, WACV 2025). Writes a change-probability GeoTIFF.",
    )
    p.add_argument("before", help="raster of the earlier date (any GDAL-readable file)")
    p.add_argument("after", help="raster of the later date (warped onto the before grid)")
    p.add_argument("-o", "--output", required=True, help="output change-probability GeoTIFF")
    p.add_argument("--mask", help="also write a binary change mask (uint8 GeoTIFF)")
    p.add_argument("--polygons", help="also write change polygons (GeoPackage)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="settings bundle: default (recommended), fast, paper (default: %(default)s)")
    p.add_argument("--iterations", type=int, help="optimisation iterations")
    p.add_argument("--learning-rate", type=float, help="Adam learning rate")
    p.add_argument("--device", choices=DEVICES, help="compute device (default: auto)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--mode", choices=MODES, default="scene", help="tiling mode (default: scene)")
    p.add_argument("--tile-size", type=int, default=512, help="tile size in pixels")
    p.add_argument("--bands", type=_bands, help="bands of both dates, e.g. 1,2,3")
    p.add_argument("--bands-before", type=_bands, help="bands of the before raster")
    p.add_argument("--bands-after", type=_bands, help="bands of the after raster")
    p.add_argument("--fe-bands", type=_bands, help="1 or 3 bands fed to the feature extractor")
    p.add_argument("--backbone", choices=BACKBONES, help="feature extractor")
    p.add_argument("--weights", help="imagenet, random, or a state-dict file of the backbone")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--resampling", choices=RESAMPLINGS, default="bilinear",
                   help="resampling of the after raster onto the before grid")
    p.add_argument("--threshold", type=_threshold, default="otsu",
                   help="mask threshold: otsu, otsu-logit, or a value in (0, 1)")
    p.add_argument("--min-area", type=float, default=0.0,
                   help="remove changed regions smaller than this (see --min-area-unit)")
    p.add_argument("--min-area-unit", choices=("pixels", "map"), default="pixels")
    p.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="compute the tiles on a running Dask cluster, e.g. tcp://HOST:8786 "
                   "(needs dask[distributed]; the inputs must be readable by every worker)")
    p.add_argument("--dask-workers", type=int, default=0, metavar="N",
                   help="compute the tiles on a local Dask cluster of N worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = ""

    def __call__(self, percent: float, message: str) -> None:
        if not self.enabled:
            return
        filled = int(percent / 100 * 30)
        line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {percent:5.1f}% {message[:60]:<60}"
        if line != self.last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self.last = line

    def close(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\n")


def config_from_args(args: argparse.Namespace) -> Tuple[MetricCDConfig, PipelineOptions]:
    """Turn parsed arguments into the engine and pipeline settings."""
    config = MetricCDConfig.preset(
        args.preset, iterations=args.iterations, learning_rate=args.learning_rate,
        device=args.device, threads=args.threads, backbone=args.backbone,
        weights=args.weights, seed=args.seed,
    )
    options = PipelineOptions(
        bands_before=args.bands_before or args.bands,
        bands_after=args.bands_after or args.bands,
        fe_bands=args.fe_bands,
        mode=args.mode,
        tile_size=args.tile_size,
        resampling=args.resampling,
        threshold=args.threshold,
        min_area=args.min_area,
        min_area_unit=args.min_area_unit,
        mask_path=args.mask,
        polygons_path=args.polygons,
        dask_scheduler=args.dask_scheduler or None,
        dask_workers=args.dask_workers,
    )
    return config, options


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``metric-cd`` console script."""
    args = build_parser().parse_args(argv)
    bar = _Bar(not args.quiet)
    try:
        from .pipeline import detect_change

        config, options = config_from_args(args)
        result = detect_change(
            args.before, args.after, args.output, config=config, options=options, progress=bar
        )
    except Cancelled as exc:
        bar.close()
        print(f"metric-cd: {exc}", file=sys.stderr)  # noqa: T201
        return 130
    except KeyboardInterrupt:
        bar.close()
        print("metric-cd: interrupted; no output was written.", file=sys.stderr)  # noqa: T201
        return 130
    except MetricCDError as exc:
        bar.close()
        print(f"metric-cd: error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    bar.close()
    print(result.to_json())  # noqa: T201
    return 0


def run(argv: Optional[List[str]] = None) -> None:
    """``python -m metric_change_detection.core.cli``."""
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
