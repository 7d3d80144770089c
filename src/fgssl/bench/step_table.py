"""The step table: every (method, variant) on synthetic batches, once per round (with ``--rounds`` > 1 the
variants alternate, so a load that drifts during the run weighs on all alike; the step times of all rounds
are pooled before the medians and ratios are taken), the ``base`` step again on real data, and the ratios:
variant / base, real / synthetic, MoCo v2 / SimSiam."""

from __future__ import annotations

import sys
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from fgssl.bench.compose import (
    Skip,
    base_overrides,
    compose,
    compose_variant,
    error_reason,
    is_missing_component,
    num_train,
    resolve,
)
from fgssl.bench.loader import WorkersData
from fgssl.bench.steps import SyntheticBatches, pool, time_training
from fgssl.bench.variants import TARGETS, label_of, overrides_of

Put = Callable[[Dict[str, Any]], None]


class StepTable:
    """Runs and reports the step table; ``runs[(method, variant, data)]`` holds one result per round."""

    def __init__(self, a, conf, meter, put: Put, data: WorkersData):
        self.a, self.conf, self.meter, self.put, self.data = a, conf, meter, put, data
        self.runs: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
        self.cfgs: Dict[Tuple[str, str], Any] = {}
        self.dead: set = set()
        self.n_train: Optional[int] = None

    def _batches(self, n: int) -> SyntheticBatches:
        import torch

        return SyntheticBatches(self.a.batch, self.a.image_size, n, torch.device(self.a.device))

    def prime(self) -> None:
        """One untimed short run first, so one-time costs (lazy library start-up, kernel selection, allocator
        pools) are not charged to whichever variant runs first."""
        a = self.a
        try:
            cfg = compose(base_overrides(a, a.methods[0]), self.conf)
            self.n_train = num_train(cfg)
            resolve(cfg, self.n_train)
            n = 2 if a.warmup > 0 else 1
            time_training(cfg, self._batches(n), 1, n - 1, a.device, self.meter, a.compile)
        except Exception as e:  # noqa: BLE001 - the timed runs will report it
            print(f"fgssl.bench: priming run failed ({error_reason(e)})", file=sys.stderr)

    def config(self, method: str, variant: str):
        if (method, variant) not in self.cfgs:
            vov = overrides_of(variant)
            cfg = compose_variant(base_overrides(self.a, method) + vov, vov, self.conf)
            if self.n_train is None:
                self.n_train = num_train(cfg)
            resolve(cfg, self.n_train)
            self.cfgs[(method, variant)] = cfg
        return self.cfgs[(method, variant)]

    def run(self) -> None:
        a = self.a
        if a.methods and a.variants and not a.no_prime:
            self.prime()
        variants = list(dict.fromkeys(a.variants))  # each once per round
        for rnd in range(0 if a.no_steps else a.rounds):
            for method in a.methods:
                for variant in variants:
                    if (method, variant) not in self.dead and self._synthetic(rnd, method, variant):
                        if variant == "base" and not a.no_real and (method, "real") not in self.dead:
                            self._real(rnd, method, variant)
        self.report(variants)

    def _synthetic(self, rnd: int, method: str, variant: str) -> bool:
        a, head = self.a, {"method": method, "variant": variant}
        try:
            cfg = self.config(method, variant)
            res = time_training(cfg, self._batches(a.warmup + a.steps), a.steps, a.warmup, a.device, self.meter,
                                a.compile)
        except Skip as e:
            self.dead.add((method, variant))
            self.put({"kind": "skip", **head, "reason": str(e)})
            return False
        except Exception as e:  # noqa: BLE001 - report and go on with the other variants
            self.dead.add((method, variant))
            if is_missing_component(e):
                self.put({"kind": "skip", **head, "reason": f"component not available yet: {error_reason(e)}"})
            else:
                self.put({"kind": "error", **head, "reason": error_reason(e)})
                traceback.print_exc(file=sys.stderr)
            return False
        self.runs.setdefault((method, variant, "synthetic"), []).append(res)
        progress(a, rnd, method, variant, "synthetic", res)
        return True

    def _real(self, rnd: int, method: str, variant: str) -> None:
        a, cfg = self.a, self.cfgs[(method, variant)]
        try:
            loader = self.data.get(cfg, bool(cfg.data.cache)).train_dataloader()
            if len(loader) < a.warmup + a.steps:
                raise RuntimeError(f"the train loader has {len(loader)} batches < warm-up + steps")
            real = time_training(cfg, loader, a.steps, a.warmup, a.device, self.meter, a.compile)
            del loader
        except Exception as e:  # noqa: BLE001
            self.dead.add((method, "real"))
            self.put({"kind": "error", "method": method, "variant": variant, "part": "real-data step",
                      "reason": error_reason(e)})
            traceback.print_exc(file=sys.stderr)
            return
        self.runs.setdefault((method, variant, "real"), []).append(real)
        progress(a, rnd, method, variant, str(cfg.data.name), real)

    def report(self, variants: List[str]) -> None:
        for method in self.a.methods:
            base = self.runs.get((method, "base", "synthetic"))
            agg_base = pool(base) if base else None
            for variant in variants:
                if self.runs.get((method, variant, "synthetic")):
                    self._report_variant(method, variant, agg_base)
        bases = {m: self.runs.get((m, "base", "synthetic")) for m in ("mocov2", "simsiam")}
        if all(bases.values()):
            ms = {m: pool(r)["ms_per_step"] for m, r in bases.items()}
            self.put({"kind": "method_ratio", "of": "mocov2/simsiam", "ms_mocov2": ms["mocov2"],
                      "ms_simsiam": ms["simsiam"], "ratio": ms["mocov2"] / ms["simsiam"]})

    def _report_variant(self, method: str, variant: str, agg_base: Optional[Dict[str, Any]]) -> None:
        a, rs = self.a, self.runs[(method, variant, "synthetic")]
        head = {"method": method, "variant": variant, "label": label_of(variant)}
        common = {"device": a.device, "backbone": a.backbone, "image_size": a.image_size, "batch": a.batch,
                  "precision": a.precision, "channels_last": a.channels_last, "compile": a.compile,
                  "steps": a.steps, "warmup": a.warmup, "overrides": overrides_of(variant)}
        agg, ratio = pool(rs), None
        if variant != "base" and agg_base is not None:
            mem, mem_b = agg["peak_mem_mb"], agg_base["peak_mem_mb"]
            ratio = {"time_ratio": agg["ms_per_step"] / agg_base["ms_per_step"],
                     "mem_ratio": (mem / mem_b) if mem is not None and mem_b else None,
                     "targets": TARGETS.get(variant, {})}
        self.put({"kind": "step", **head, "data": "synthetic", **common, "rounds": len(rs), **agg, **(ratio or {})})
        if ratio:
            self.put({"kind": "ratio", **head, "of": f"{variant}/base", **ratio})
        real = self.runs.get((method, variant, "real"))
        if real and agg_base is not None:
            cfg, agg_real = self.cfgs[(method, variant)], pool(real)
            self.put({"kind": "step", **head, "data": str(cfg.data.name), "cache": bool(cfg.data.cache),
                      "workers": int(cfg.data.num_workers), **common, "rounds": len(real), **agg_real})
            self.put({"kind": "real_vs_synthetic", "method": method, "data": str(cfg.data.name),
                      "ms_real": agg_real["ms_per_step"], "ms_synthetic": agg_base["ms_per_step"],
                      "ratio": agg_real["ms_per_step"] / agg_base["ms_per_step"]})


def progress(a, rnd: int, method: str, variant: str, data: str, res: Dict[str, Any]) -> None:
    rounds = f"round {rnd + 1}/{a.rounds} " if a.rounds > 1 else ""
    mem = "" if res["peak_mem_mb"] is None else f", peak {res['peak_mem_mb']:.0f} MB"
    print(f"fgssl.bench: {rounds}{method} {label_of(variant)} {data}: {res['ms_per_step']:.1f} ms/step{mem}",
          file=sys.stderr, flush=True)
