"""The minimum change area: what removing small change regions does to quality and clutter.

Each shared labelled pair is run once through the real raster pipeline (the `default` preset,
its automatic decision, no minimum area); the probability raster and its threshold are cached.
Then the mask is written again by ``core.outputs.write_mask`` (the plugin's own 8-connected
region filter) and polygonised by ``core.outputs.write_polygons`` at every minimum area, and
scored on the labelled pixels. Printed: per group of imagery the mean F1, the share of the
labelled change regions the mask touches, the polygon count and the share of polygons removed,
then the rule's choice (:func:`choose`).

    nice -n 5 env OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        .venv/bin/python bench/bench_min_area.py                  # all pairs, cached maps
    .venv/bin/python bench/bench_min_area.py --method cva --datasets oscd/lasvegas sar_ottawa

Labels only score; they choose nothing in a run. Measured on 2026-12-02 (commit 84db9ab's
pipeline; 2-core machine, one thread: about 12 minutes computing the maps, 5 per rerun on them):
the rule gives 8 pixels (core.config.MIN_AREA_PIXELS): 56 % fewer polygons, mean F1 0.285 ->
0.288, at most -0.002 in a group; 16 pixels cost Landsat and DSIFN 0.009. The region tables
show the price: the labelled regions more than half marked go from 45.3 to 44.0 %.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metric_change_detection.core import outputs  # noqa: E402
from metric_change_detection.core.accuracy import assessment  # noqa: E402
from osgeo import gdal  # noqa: E402

from bench import datasets  # noqa: E402
from bench.bench_quality import _write  # noqa: E402

#: Minimum areas measured, in pixels of the input.
AREAS = (0, 2, 4, 8, 16, 32, 64)
#: The rule: the largest area lowering no group's mean F1 by more than this.
F1_TOLERANCE = 0.005
CACHE = Path(tempfile.gettempdir()) / "metriccd_min_area"


def probability(name: str, method: str, cache: Path) -> Path:
    """The cached probability raster of ``name`` by ``method`` (computed when missing); its
    threshold is in ``<raster>.json``."""
    from metric_change_detection.core.baseline_pipeline import detect_change_baseline
    from metric_change_detection.core.config import MetricCDConfig, PipelineOptions
    from metric_change_detection.core.pipeline import detect_change

    path = cache / f"{name.replace('/', '_')}__{method}.tif"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path
    data = datasets.load(name)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        before = _write(Path(tmp) / "before.tif", data.before, data.wavelengths)
        after = _write(Path(tmp) / "after.tif", data.after, data.wavelengths)
        options = PipelineOptions(min_area=0)
        start = time.perf_counter()
        out = str(Path(tmp) / "p.tif")
        if method in ("cva", "pcakmeans", "irmad"):
            result = detect_change_baseline(method, before, after, out, options=options)
        else:
            from metric_change_detection.core.demo import offline_weights

            weights = offline_weights() or "imagenet"  # the ImageNet file when installed
            config = MetricCDConfig.preset(method, threads=1, weights=weights)
            result = detect_change(before, after, out, config=config, options=options)
        seconds = time.perf_counter() - start
        Path(out).replace(path)
    meta.write_text(json.dumps({"threshold": result.threshold, "seconds": seconds}))
    return path


def _regions(change: np.ndarray) -> tuple:
    """The 8-connected regions of a boolean map: (labels, count)."""
    from scipy.ndimage import label

    return label(change, structure=np.ones((3, 3), bool))


def _sizes(mask: np.ndarray) -> np.ndarray:
    """Pixel counts of the 8-connected change regions of ``mask`` (for the speckle share)."""
    labels, count = _regions(mask == 1)
    return np.bincount(labels.ravel())[1:] if count else np.zeros(0, int)


def _found(truth_labels: np.ndarray, count: int, marked: np.ndarray,
           share: float = 0.0) -> Optional[float]:
    """Share of the labelled change regions of which more than ``share`` of the pixels are
    marked (0: one marked pixel is enough)."""
    if not count:
        return None
    sizes = np.bincount(truth_labels.ravel(), minlength=count + 1)[1:]
    hits = np.bincount(truth_labels[marked].ravel(), minlength=count + 1)[1:]
    return float(np.mean(hits > share * sizes))


def measure(name: str, prob: Path, work: Path) -> List[dict]:
    """One row per minimum area: F1, marked share, polygons, single-pixel regions left."""
    threshold = json.loads(prob.with_suffix(".json").read_text())["threshold"]
    data = datasets.load(name)
    ds = gdal.Open(str(prob))
    p = ds.GetRasterBand(1).ReadAsArray()
    labelled = data.labelled & np.isfinite(p) & (p != -9999.0)
    truth_labels, truth_count = _regions(data.change & labelled)
    rows = []
    for area in AREAS:
        mask_path, polygons_path = work / f"m{area}.tif", work / f"p{area}.gpkg"
        outputs.write_mask(prob, mask_path, threshold, area)
        count = outputs.write_polygons(mask_path, prob, polygons_path)
        mds = gdal.Open(str(mask_path))
        mask = mds.GetRasterBand(1).ReadAsArray()
        mds = None
        sizes = _sizes(mask)
        has_change = bool((data.change & labelled).any())
        m = assessment(mask == 1, data.change, labelled)
        rows.append({"dataset": name, "group": datasets.group(name), "area": area,
                     "f1": m["f1"] if has_change else None,
                     "found": _found(truth_labels, truth_count, (mask == 1) & labelled),
                     "half": _found(truth_labels, truth_count, (mask == 1) & labelled, 0.5),
                     "marked": float((mask[labelled] == 1).mean()) if labelled.any() else 0.0,
                     "polygons": count, "singles": int((sizes == 1).sum())})
        for path in (mask_path, polygons_path):
            outputs.remove_raster(path) if path.suffix == ".tif" else path.unlink()
    return rows


def show(text: str) -> None:
    """Print one line of the tables at once (they are read while the run goes on)."""
    print(text, flush=True)  # noqa: T201


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def table(rows: List[dict]) -> Dict[str, Dict[int, dict]]:
    """Per group (and 'all'), per area: mean F1, polygons, removed and single-pixel shares."""
    by: Dict[str, Dict[int, List[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for key in (row["group"], "all"):
            by[key][row["area"]].append(row)
    out: Dict[str, Dict[int, dict]] = {}
    for key, areas in by.items():
        base = areas[0]
        n0 = sum(r["polygons"] for r in base)
        s0 = sum(r["singles"] for r in base)
        out[key] = {}
        for area, group_rows in areas.items():
            n = sum(r["polygons"] for r in group_rows)
            out[key][area] = {
                "pairs": sum(r["f1"] is not None for r in group_rows),
                "f1": _mean([r["f1"] for r in group_rows]),
                "found": _mean([r["found"] for r in group_rows]),
                "half": _mean([r["half"] for r in group_rows]),
                "polygons": n, "removed": 1 - n / n0 if n0 else 0.0,
                "speckle_removed": 1 - sum(r["singles"] for r in group_rows) / s0 if s0 else 1.0,
                "marked": _mean([r["marked"] for r in group_rows]),
            }
    return out


def choose(summary: Dict[str, Dict[int, dict]]) -> int:
    """The largest area that, like every smaller one, lowers no group's mean F1 by more than
    ``F1_TOLERANCE`` (0 when even the smallest does)."""
    chosen = 0
    for area in AREAS[1:]:
        if any(g[area]["f1"] is not None and g[0]["f1"] is not None
               and g[area]["f1"] < g[0]["f1"] - F1_TOLERANCE for g in summary.values()):
            break
        chosen = area
    return chosen


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(summary: Dict[str, Dict[int, dict]]) -> None:
    groups = [g for g in datasets.GROUPS if g in summary] + ["all"]
    show("\nMean F1 per group (pairs with change) by minimum area in pixels:\n")
    show("| min area | " + " | ".join(f"{g} ({summary[g][0]['pairs']})" for g in groups) + " |")
    show("|---" * (len(groups) + 1) + "|")
    for area in AREAS:
        cells = []
        for g in groups:
            f1, f0 = summary[g][area]["f1"], summary[g][0]["f1"]
            delta = "" if area == 0 or f1 is None else f" ({f1 - f0:+.3f})"
            cells.append(_fmt(f1) + delta)
        show(f"| {area} | " + " | ".join(cells) + " |")
    for key, title in (
        ("found", "touched by the mask (one marked pixel is enough, so chance hits of speckle "
                  "count too)"),
        ("half", "more than half marked"),
    ):
        show(f"\nShare of the labelled change regions (8-connected) {title}, per group:\n")
        show("| min area | " + " | ".join(groups) + " |")
        show("|---" * (len(groups) + 1) + "|")
        for area in AREAS:
            cells = []
            for g in groups:
                found, base = summary[g][area][key], summary[g][0][key]
                delta = "" if area == 0 or found is None else f" ({found - base:+.3f})"
                cells.append(_fmt(found) + delta)
            show(f"| {area} | " + " | ".join(cells) + " |")
    show("\nChange polygons per group (share removed), then overall: single-pixel regions "
          "removed and the mean share marked:\n")
    show("| min area | " + " | ".join(groups) + " | 1-px regions removed | marked |")
    show("|---" * (len(groups) + 3) + "|")
    for area in AREAS:
        cells = [f"{summary[g][area]['polygons']} ({100 * summary[g][area]['removed']:.0f} %)"
                 for g in groups]
        overall = summary["all"][area]
        show(f"| {area} | " + " | ".join(cells)
              + f" | {100 * overall['speckle_removed']:.0f} % | {100 * overall['marked']:.2f} % |")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="default",
                        help="a Metric-CD preset (default, fast, paper) or cva / pcakmeans / irmad")
    parser.add_argument("--datasets", nargs="*", default=list(datasets.NAMES))
    parser.add_argument("--no-change", action="store_true",
                        help="also the generated pairs without change (bench.datasets.NO_CHANGE)")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"map cache (default {CACHE})")
    args = parser.parse_args(argv)
    names = list(args.datasets) + (list(datasets.NO_CHANGE) if args.no_change else [])
    args.cache.mkdir(parents=True, exist_ok=True)
    rows: List[dict] = []
    show("| pair | " + " | ".join(f"F1 / polygons at {a}" for a in AREAS) + " |")
    show("|---" * (len(AREAS) + 1) + "|")
    for name in names:
        if not name.startswith("nochange/") and not datasets.available(name):
            show(f"| {name} | missing |")
            continue
        prob = probability(name, args.method, args.cache)
        with tempfile.TemporaryDirectory(dir=args.cache) as work:
            pair_rows = measure(name, prob, Path(work))
        rows.extend(r for r in pair_rows if not name.startswith("nochange/"))
        cells = [f"{_fmt(r['f1'])} / {r['polygons']}" if r["f1"] is not None
                 else f"{100 * r['marked']:.2f} % / {r['polygons']}" for r in pair_rows]
        show(f"| {name} | " + " | ".join(cells) + " |")
    summary = table(rows)
    print_tables(summary)
    chosen = choose(summary)
    show(f"\nRule: the largest area that, like every smaller one, lowers no group's mean F1 by "
          f"more than {F1_TOLERANCE}: {chosen} pixels.")

if __name__ == "__main__":
    main()
