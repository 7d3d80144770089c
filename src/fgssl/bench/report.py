"""The human-readable table of a list of bench records (the JSON lines)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from fgssl.bench.variants import label_of

Records = List[Dict[str, Any]]


def fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(headers: List[str], rows: List[List[str]], right: Sequence[int] = ()) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _env_lines(env: Dict[str, Any]) -> List[str]:
    if not env:
        return []
    return [
        f"fgssl bench on {env.get('device_name', env.get('device'))} ({env.get('device')}, "
        f"{env.get('threads')} torch threads): {env.get('backbone')} {env.get('image_size')}px, batch "
        f"{env.get('batch')}, precision {env.get('precision')}, channels_last "
        f"{'on' if env.get('channels_last') else 'off'}, compile {'on' if env.get('compile') else 'off'}; "
        f"{env.get('steps')} timed steps after {env.get('warmup')} warm-up"
        + (f", x{env['rounds']} rounds (alternating, pooled)" if env.get("rounds", 1) > 1 else ""),
        f"memory: {env.get('mem_kind')}",
    ]


def _step_lines(records: Records) -> List[str]:
    steps = [r for r in records if r["kind"] == "step"]
    if not steps:
        return []
    rows = []
    for r in steps:
        q = r if r.get("time_ratio") is not None else None
        tgt = "" if q is None else "/".join(f"{k}<={v}" for k, v in q.get("targets", {}).items())
        rows.append([
            r["method"], r.get("label") or label_of(r["variant"]), r["data"],
            fmt(r["ms_per_step"]), fmt(r["ms_std"]), fmt(r["ms_compute"]), fmt(r["images_per_s"]),
            fmt(r["peak_mem_mb"], ".0f"),
            fmt(q["time_ratio"], ".2f") + "x" if q else "", fmt(q["mem_ratio"], ".2f") + "x" if q else "", tgt,
        ])
    return [""] + table(["method", "variant", "data", "ms/step", "+-", "compute", "img/s", "peak MB", "time/base",
                         "mem/base", "target"], rows, right=range(3, 10))


def _ratio_lines(records: Records) -> List[str]:
    out: List[str] = []
    for r in (r for r in records if r["kind"] == "method_ratio"):
        out += ["", f"base step, MoCo v2 / SimSiam: {r['ratio']:.2f}x "
                    f"({r['ms_mocov2']:.1f} vs {r['ms_simsiam']:.1f} ms)"]
    rvs = [r for r in records if r["kind"] == "real_vs_synthetic"]
    if rvs:
        out += ["", "real-data step / synthetic-tensor step: " + ", ".join(
            f"{r['method']} {r['ratio']:.2f}x ({r['ms_real']:.1f} vs {r['ms_synthetic']:.1f} ms)" for r in rvs)
            + "  (target on GPU: <= 1.1x)"]
    loaders = [r for r in records if r["kind"] == "loader"]
    if loaders:
        rows = [[r["dataset"], "on" if r["cache"] else "off", str(r["workers"]), fmt(r["images_per_s"]),
                 fmt(r["views_per_s"]), fmt(r["ms_per_batch"]), fmt(r["setup_s"], ".2f")] for r in loaders]
        out += [""] + table(["loader", "cache", "workers", "img/s", "views/s", "ms/batch", "setup s"], rows,
                            right=range(2, 7))
    return out


def _pipeline_lines(records: Records) -> List[str]:
    out: List[str] = []
    pipes = [r for r in records if r["kind"] == "pipeline"]
    if pipes:
        out += ["", "real-data step / synthetic step by pipeline (targets: CPU <= 1.1x, GPU R50 224px bf16 <= 1.05x):"]
        out += [f"  {r['method']}{' (one-directional)' if r['method'] == 'mocov2' and not r['symmetric'] else ''} "
                f"{r['pipeline']}: {r['ratio']:.2f}x ({r['ms_real']:.1f} vs {r['ms_synthetic']:.1f} ms)"
                + (f", cache in {r['held_in']}" if r.get("held_in") else "")
                + (f", views drawn by the {r['views_by']}" if r.get("views_by") else "")
                + (f", {r['workers']} workers" if r.get("workers") is not None else "") for r in pipes]
    loaders = [r for r in records if r["kind"] == "pipeline_loader"]
    if loaders:
        out += ["", "pipeline alone: " + ", ".join(
            f"{r['pipeline']} {r['images_per_s']:.0f} img/s ({r['ms_per_batch']:.1f} ms/batch, setup "
            f"{r['setup_s']:.1f} s)" for r in loaders)]
    for r in (r for r in records if r["kind"] == "augment"):
        out += ["", f"views of a batch of {r['batch']} ({r['cache_side']}px cache -> {r['image_size']}px): fgssl "
                    f"{r['fgssl_images_per_s']:.0f} img/s ({r['fgssl_no_param_draw_images_per_s']:.0f} without "
                    f"drawing the parameters), kornia.augmentation {r['kornia_augmentation_images_per_s']:.0f} img/s; "
                    f"hue step alone: fgssl's hue_shift {r['hue_own_images_per_s']:.0f} img/s, "
                    f"kornia.enhance.adjust_hue {r['hue_kornia_images_per_s']:.0f} img/s"]
    return out


def _tail_lines(records: Records) -> List[str]:
    out: List[str] = []
    peers = [r for r in records if r["kind"] == "peer"]
    if peers:
        out += ["", "fgssl base step / lightly-built step (target <= 1.05x): " + ", ".join(
            f"{r['method']}{' one-directional' if r['method'] == 'mocov2' and not r['symmetric'] else ''} "
            f"{r['ratio']:.2f}x ({r['ms_fgssl']:.1f} vs {r['ms_lightly']:.1f} ms, lightly {r['lightly']}; "
            f"GFLOP per step {fmt(r.get('gflop_fgssl'), '.2f')} vs {fmt(r.get('gflop_lightly'), '.2f')})"
            for r in peers)]
    for r in (r for r in records if r["kind"] == "retrieval"):
        out += ["", f"retrieval {r['n']}x{r['d']} (chunk {r['chunk']}): retrieval_metrics {r['ms_retrieval']:.1f} ms, "
                    f"bare X@X.T {r['ms_matmul']:.1f} ms -> {fmt(r['ratio'], '.2f')}x  (target <= 2x)"]
    notes = [r for r in records if r["kind"] in ("skip", "error")]
    if notes:
        out.append("")
        for r in notes:
            what = " ".join(str(r[k]) for k in ("method", "variant", "part") if r.get(k))
            out.append(f"{r['kind']}: {what}: {r['reason']}")
    return out


def format_report(records: Records) -> str:
    env = next((r for r in records if r["kind"] == "env"), {})
    return "\n".join(_env_lines(env) + _step_lines(records) + _ratio_lines(records) + _pipeline_lines(records)
                     + _tail_lines(records))
