"""``metric-cd``: unsupervised change detection from the command line (no QGIS needed).

``metric-cd`` runs Metric-CD (default) or a classical baseline (``--method cva|pcakmeans|irmad``);
``metric-cd-accuracy`` assesses a change map against a reference raster.

Prints a progress bar on stderr and a one-line JSON summary on stdout (nothing else goes to
stdout); exits 0 on success, 1 with a one-line error on bad input, 130 when interrupted
(Ctrl-C), 128 + the signal's number on SIGTERM or SIGHUP; interrupted or failed, it leaves no
output behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .config import (
    ALPHA,
    BACKBONES,
    DEVICES,
    MIN_AREA_PIXELS,
    MODES,
    PRESETS,
    RESAMPLINGS,
    THRESHOLD_RULES,
    MetricCDConfig,
    PipelineOptions,
    check_seed,
)
from .errors import Cancelled, InputError, MetricCDError

METHODS = ("metric-cd", "cva", "pcakmeans", "irmad")
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds (and cleans up) like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM``."""
        return signal.Signals(self.signum).name


def band_list(text: str) -> Tuple[int, ...]:
    """A comma-separated list of 1-based band numbers (the CLI's --bands and --fe-bands)."""
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
            f"threshold must be 'auto', 'otsu' or a number (in (0, 1) for metric-cd, in "
            f"score units for the classical methods), got {text!r}"
        ) from None


def _method_option(text: str) -> Tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"method options are KEY=VALUE, e.g. block=5 (got {text!r})")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return key.strip(), parsed


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="metric-cd",
        description="Unsupervised change detection between two co-registered rasters with "
        "Metric-CD (Bandara & Patel, WACV 2025). Writes a change-probability GeoTIFF.",
    )
    p.add_argument("before", help="raster of the earlier date (any GDAL-readable file)")
    p.add_argument("after", help="raster of the later date (warped onto the before grid)")
    p.add_argument("-o", "--output", required=True,
                   help="output change-probability GeoTIFF (change-score GeoTIFF for the classics)")
    p.add_argument("--method", choices=METHODS, default="metric-cd",
                   help="metric-cd (default), or a classical baseline: cva (change vector analysis), "
                   "pcakmeans (Celik 2009), irmad (Nielsen 2007); Metric-CD-only flags (preset, "
                   "iterations, device, backbone, mode, dask ...) are ignored for the classics")
    p.add_argument("--method-option", type=_method_option, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="option of a classical method, repeatable: cva normalise=false; pcakmeans "
                   "block=4 n_components=3; irmad max_iter=50 tol=1e-6; any: sample_pixels=2000000, "
                   "sharpness=1 (the blur in pixels the test allows between the dates; 0 = "
                   "none), probability_path=P.tif; pcakmeans, irmad: gate=false (their own score "
                   "alone, without the difference magnitude's test)")
    p.add_argument("--mask", help="also write a binary change mask (uint8 GeoTIFF)")
    p.add_argument("--polygons", help="also write change polygons (GeoPackage)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="settings bundle: default (recommended), fast, paper (default: %(default)s)")
    p.add_argument("--iterations", type=int, help="optimisation iterations")
    p.add_argument("--learning-rate", type=float, help="Adam learning rate")
    p.add_argument("--gate", type=float,
                   help="evidence gate: 1 = a pixel is marked changed only where its "
                        "difference vector is significant too (the CVA test), 0 = off "
                        "(default: the preset's)")
    p.add_argument("--feature-fusion", type=float,
                   help="weight of the feature extractor's own change measure added to the "
                        "generator's score; 0 = the generator alone (default: the preset's)")
    p.add_argument("--device", choices=DEVICES, help="compute device (default: auto)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--mode", choices=MODES, default="scene", help="tiling mode (default: scene)")
    p.add_argument("--tile-size", type=int, default=512, help="tile size in pixels")
    p.add_argument("--bands", type=band_list, help="bands of both dates, e.g. 1,2,3")
    p.add_argument("--bands-before", type=band_list, help="bands of the before raster")
    p.add_argument("--bands-after", type=band_list, help="bands of the after raster")
    p.add_argument("--fe-bands", type=band_list,
                   help="1 or 3 bands fed to the feature extractor (default, presets default "
                   "and fast: short-wave infrared, near infrared, red, else red, green, blue, "
                   "when the bands record their wavelengths; else, and with paper, the first "
                   "three)")
    p.add_argument("--backbone", choices=BACKBONES, help="feature extractor")
    p.add_argument("--weights", help="imagenet, random, or a state-dict file of the backbone")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--resampling", choices=RESAMPLINGS, default="bilinear",
                   help="resampling of the after raster onto the before grid")
    p.add_argument("--alpha", type=float, default=ALPHA,
                   help="false-alarm rate of the automatic decision: the share of unchanged "
                   "pixels expected to be marked changed (default: %(default)s)")
    p.add_argument("--threshold", type=_threshold, default="auto",
                   help="mask rule: auto (the score tested against its no-change law at --alpha), "
                   "otsu (Otsu's threshold, for comparison), or a value in (0, 1); for the classics "
                   "a score (IR-MAD: chi-square Z), automatic when not a number")
    p.add_argument("--min-area", type=float, default=None,
                   help="remove change regions smaller than this, in --min-area-unit; 0 keeps "
                   f"all (default: {MIN_AREA_PIXELS} pixels, measured: bench/bench_min_area.py)")
    p.add_argument("--min-area-unit", choices=("pixels", "map"), default="pixels",
                   help="unit of --min-area: pixels of the input or square map units (e.g. m²)")
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

    def close(self, keep: bool = True) -> None:
        """End the bar's line (``keep``) or erase it (before an error message)."""
        if self.enabled and self.last:
            sys.stderr.write("\n" if keep else "\r" + " " * (len(self.last) - 1) + "\r")


def min_area_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """``min_area`` and ``min_area_unit``: as given, else :data:`MIN_AREA_PIXELS` pixels."""
    if args.min_area is None:
        return {"min_area": MIN_AREA_PIXELS, "min_area_unit": "pixels"}
    return {"min_area": args.min_area, "min_area_unit": args.min_area_unit}


def config_from_args(args: argparse.Namespace) -> Tuple[MetricCDConfig, PipelineOptions]:
    """Turn parsed arguments into the engine and pipeline settings."""
    config = MetricCDConfig.preset(
        args.preset, iterations=args.iterations, learning_rate=args.learning_rate, gate=args.gate,
        feature_fusion=args.feature_fusion, device=args.device, threads=args.threads,
        backbone=args.backbone, weights=args.weights, seed=args.seed,
    )
    options = PipelineOptions(
        bands_before=args.bands_before or args.bands,
        bands_after=args.bands_after or args.bands,
        fe_bands=args.fe_bands,
        mode=args.mode,
        tile_size=args.tile_size,
        resampling=args.resampling,
        threshold=args.threshold,
        alpha=args.alpha,
        **min_area_from_args(args),
        mask_path=args.mask,
        polygons_path=args.polygons,
        dask_scheduler=args.dask_scheduler or None,
        dask_workers=args.dask_workers,
    )
    return config, options


def baseline_options_from_args(args: argparse.Namespace) -> Tuple[PipelineOptions, Dict[str, Any]]:
    """Pipeline and method options of a classical method (Metric-CD-only flags are ignored)."""
    options = PipelineOptions(
        bands_before=args.bands_before or args.bands,
        bands_after=args.bands_after or args.bands,
        tile_size=args.tile_size,
        resampling=args.resampling,
        alpha=args.alpha,
        **min_area_from_args(args),
        mask_path=args.mask,
        polygons_path=args.polygons,
    )
    method_options: Dict[str, Any] = dict(args.method_option)
    if not isinstance(args.threshold, str):
        method_options["threshold"] = args.threshold
    if args.seed is not None:
        check_seed(args.seed)
        if args.method != "cva":
            method_options.setdefault("seed", args.seed)
    return options, method_options


def _check_suffixes(args: argparse.Namespace) -> None:
    """The written formats are GeoTIFF and GeoPackage: refuse other extensions at once."""
    from .raster_io import GEOPACKAGE_SUFFIXES, GEOTIFF_SUFFIXES, check_suffix

    probability = dict(args.method_option).get("probability_path")
    for what, path in (("-o/--output", args.output), ("--mask", args.mask),
                       ("probability_path", probability)):
        check_suffix(path and str(path), what, GEOTIFF_SUFFIXES)
    check_suffix(args.polygons, "--polygons", GEOPACKAGE_SUFFIXES)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Terminated` (once) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: List[int] = []

    def handler(signum: int, frame: object) -> None:
        if not fired:  # a second signal must not interrupt the clean-up of the first
            fired.append(signum)
            raise Terminated(signum)

    saved = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what is written to stdout meanwhile (torch's download line, C libraries) to stderr."""
    sys.stdout.flush()
    try:
        out, err = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced streams (tests): Python level only
        out = err = -1
    saved = os.dup(out) if out >= 0 else -1
    if saved >= 0:
        os.dup2(err, out)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved >= 0:
            os.dup2(saved, out)
            os.close(saved)


def _run(args: argparse.Namespace, bar: _Bar):
    """Run the chosen method; the ``ChangeResult``."""
    _check_suffixes(args)
    if args.method == "metric-cd":
        from .pipeline import detect_change

        config, options = config_from_args(args)
        return detect_change(
            args.before, args.after, args.output, config=config, options=options, progress=bar
        )
    from .baseline_pipeline import detect_change_baseline

    options, method_options = baseline_options_from_args(args)
    return detect_change_baseline(
        args.method, args.before, args.after, args.output, options=options,
        method_options=method_options, progress=bar,
    )


#: GDAL's block cache (MB) for a run unless ``GDAL_CACHEMAX`` is set. GDAL's default, 5 % of
#: the RAM, took a Sentinel-2-tile run to 2.3 GB peak; with 256 MB CVA's peak fell from 1.7 GB
#: to 0.8 GB at the same speed (bench/bench_speed.py s2tile). QGIS keeps its own setting.
GDAL_CACHE_MB = 256
#: glibc memory pools of a run (see :func:`limit_malloc_arenas`).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_gdal_cache() -> None:
    """Bound GDAL's block cache to :data:`GDAL_CACHE_MB` unless the user set ``GDAL_CACHEMAX``."""
    if "GDAL_CACHEMAX" not in os.environ:
        from osgeo import gdal

        gdal.SetCacheMax(GDAL_CACHE_MB * 1024 * 1024)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let glibc's allocator keep at most ``arenas`` memory pools (one per thread by default).

    The reading and writing threads each grew a pool of freed tiles that was never given back
    (peak RSS of CVA on the s2tile pair 969 MB, 678 MB with two pools). Only where the user
    did not set ``MALLOC_ARENA_MAX``, and only in this console script's own process (the
    QGIS plugin leaves the host's allocator alone). True where it was applied.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):  # not glibc
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``metric-cd`` console script."""
    args = build_parser().parse_args(argv)
    limit_gdal_cache()
    limit_malloc_arenas()
    bar = _Bar(not args.quiet)
    try:
        with _stop_signals_raise(), _stdout_to_stderr():
            result = _run(args, bar)
    except Cancelled as exc:
        bar.close(keep=False)
        print(f"metric-cd: {exc}", file=sys.stderr)  # noqa: T201
        return 130
    except Terminated as exc:
        bar.close(keep=False)
        print(f"metric-cd: stopped by {exc.name}; no output was written.", file=sys.stderr)  # noqa: T201
        return 128 + exc.signum
    except KeyboardInterrupt:
        bar.close(keep=False)
        print("metric-cd: interrupted; no output was written.", file=sys.stderr)  # noqa: T201
        return 130
    except MetricCDError as exc:
        bar.close(keep=False)
        print(f"metric-cd: error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    bar.close()
    print(f"metric-cd: {result.verdict}", file=sys.stderr)  # noqa: T201
    print(result.to_json())  # noqa: T201
    return 0


def run(argv: Optional[List[str]] = None) -> None:
    """``python -m metric_change_detection.core.cli``."""
    sys.exit(main(argv))


def build_accuracy_parser() -> argparse.ArgumentParser:
    """The ``metric-cd-accuracy`` command line."""
    p = argparse.ArgumentParser(
        prog="metric-cd-accuracy",
        description="Accuracy of a change map (binary or probability/score) against a reference "
        "raster: precision, recall, F1, Cohen's kappa, overall accuracy, ROC-AUC and the confusion "
        "matrix, printed as one line of JSON. The reference is resampled (nearest) onto the map's grid.",
    )
    p.add_argument("change_map", metavar="MAP",
                   help="change map: integer = binary (non-zero = change), float = probability/score")
    p.add_argument("reference", metavar="REFERENCE", help="reference raster (first band)")
    p.add_argument("--change-values", required=True, metavar="V[,V...]",
                   help="reference values meaning change, e.g. 2 (OSCD) or 255 (0/255 masks)")
    p.add_argument("--nochange-values", metavar="V[,V...]",
                   help="reference values meaning no change, e.g. 1; default: every other value "
                   "(values in neither list are ignored)")
    p.add_argument("--threshold", type=float,
                   help="threshold of a probability/score map (change = value > T); default Otsu")
    p.add_argument("--band", type=int, default=1, help="band of the change map (default 1)")
    p.add_argument("--report", metavar="HTML", help="also write an HTML report with the ROC curve")
    return p


def _values(text: Optional[str], what: str) -> Optional[List[float]]:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers such as 1,2 (got {text!r}).") from None
    if not values:
        raise InputError(f"{what} is empty; give at least one reference value, e.g. 2.")
    return values


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def accuracy_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``metric-cd-accuracy`` console script."""
    args = build_accuracy_parser().parse_args(argv)
    try:
        from .accuracy import accuracy_report_html, assess_rasters

        if args.threshold is not None and not math.isfinite(args.threshold):
            raise InputError(f"--threshold must be a finite number, got {args.threshold}.")
        metrics = assess_rasters(
            args.change_map, args.reference,
            _values(args.change_values, "--change-values"),
            _values(args.nochange_values, "--nochange-values"),
            threshold=args.threshold, band=args.band,
        )
        if args.report:
            accuracy_report_html(metrics, metrics.get("roc"), args.report,
                                 title=f"Change detection accuracy: {args.change_map}")
    except MetricCDError as exc:
        print(f"metric-cd-accuracy: error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    except RuntimeError as exc:  # GDAL errors not turned into InputError by the core
        message = " ".join(str(exc).split())
        print(f"metric-cd-accuracy: error: {message}; check both rasters.", file=sys.stderr)  # noqa: T201
        return 1
    summary = {k: _json_number(v) for k, v in metrics.items() if k != "roc"}
    if args.report:
        summary["report"] = args.report
    print(json.dumps(summary))  # noqa: T201
    return 0


if __name__ == "__main__":
    run()
