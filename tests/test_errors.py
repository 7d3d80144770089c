"""Bad input through the real entry points: one ``fgssl error: ...`` line, exit code 2, no traceback.

The four commands are started together (they are independent and mostly spend their time
importing) and each test checks one of them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torchvision

from conftest import ROOT
from fixtures import make_imagefolder_set


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    base = tmp_path_factory.mktemp("errors")
    fx = make_imagefolder_set(base / "ds")
    sd = torchvision.models.resnet18(weights=None).state_dict()
    del sd["layer4.1.bn2.running_var"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(sd, base / "mismatch.pth")
    smoke = ["debug=smoke", "trainer.enable_progress_bar=false", "logger=none"]
    specs = {
        "missing_root": (["train.py", "data=imagefolder", f"data.root={base / 'no_such_dataset'}", *smoke],
                         [str(base / "no_such_dataset"), "Expected layout"]),
        "batch_too_large": (["train.py", *fx.overrides(), *smoke, "data.batch_size=500"],
                            ["data.batch_size=500", "18 training images"]),
        "weights_mismatch": (["train.py", *fx.overrides(), *smoke, f"backbone.weights={base / 'mismatch.pth'}"],
                             ["mismatch.pth", "layer4.1.bn2.running_var", "layer5.0.conv1.weight"]),
        "missing_ckpt": (["evaluate.py", f"ckpt={base / 'runs' / 'last.ckpt'}", *smoke],
                         [str(base / "runs" / "last.ckpt"), "not found"]),
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {}
    for name, (argv, _) in specs.items():
        run = base / f"run_{name}"
        cmd = [sys.executable, str(ROOT / argv[0]), *argv[1:], f"hydra.run.dir={run}"]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=base,
                                       env=env)
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[name] = (p.returncode, out, err, specs[name][1])
    return results


@pytest.mark.parametrize("name", ["missing_root", "batch_too_large", "weights_mismatch", "missing_ckpt"])
def test_entry_point_error(name, cases):
    rc, out, err, must_name = cases[name]
    both = out + err
    assert rc == 2, both[-3000:]
    assert "Traceback" not in both, both[-3000:]
    lines = [line for line in both.splitlines() if "fgssl error:" in line]
    assert len(lines) == 1, both[-3000:]
    assert lines[0].startswith("fgssl error: ")
    assert lines[0] in err.splitlines(), "the error goes to stderr"
    for word in must_name:
        assert word in lines[0], (word, lines[0])
