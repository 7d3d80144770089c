"""``python -m fgssl.bench`` (``make bench``): training-step, data-pipeline, peer and retrieval benchmark.

Everything runs in one process, one part after another, so the ratios it prints compare numbers taken on
the same device in the same run (docs/bench.md). The parts, each its own module:

* :mod:`~fgssl.bench.steps`: the training step of each method and variant (``--variants``), the method built
  by the training factory on the real ``conf/`` tree composed by Hydra (:mod:`~fgssl.bench.compose`) and run
  by a real ``pl.Trainer`` on a fixed synthetic batch; the real-data step through the train loader;
* :mod:`~fgssl.bench.loader`: the train loader alone;
* :mod:`~fgssl.bench.pipelines`: real / synthetic step through the ``device`` and ``workers`` pipelines,
  each pipeline alone, fgssl's views against ``kornia.augmentation``;
* :mod:`~fgssl.bench.peer`: MoCo v2 / SimSiam steps built from lightly's heads and losses;
* :mod:`~fgssl.bench.retrieval`: ``retrieval_metrics`` at scale against the bare ``X @ X.T``.

:mod:`~fgssl.bench.runner` runs them, :mod:`~fgssl.bench.report` prints the table, :mod:`~fgssl.bench.cli`
holds the flags. Output: one JSON object per line (stdout or ``--out``), then the table.
"""

from fgssl.bench.cli import main, parse_args
from fgssl.bench.report import format_report
from fgssl.bench.runner import run
from fgssl.bench.variants import VARIANTS

__all__ = ["main", "parse_args", "run", "format_report", "VARIANTS"]
