"""Every command of the README is true as written (issue 18).

Default suite: each line of every ``bash`` block is parsed; each ``python train.py|evaluate.py|figures.py``
line is composed against the real Hydra config (every key and option must exist, ``+key`` included); the
folders it names (a checkpoint's run dir, a sweep folder, ``# -> FOLDER`` annotations of sweeps) must be
the ones the config really produces; modules, make targets and repo paths must exist; the quoted error
output is what the command prints; the quoted metrics table is drawn the way the code draws it.

Slow (``-m slow``): every command is run, made tiny by making ``debug=smoke`` the default in a copy of
``conf/`` (so paths such as ``outputs/mocov2-cub53/default`` stay as written), and its stated outputs
are checked.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import CONF, ROOT
from fgssl.compose import compose
from fgssl.preflight import check_cli_keys

README = (ROOT / "README.md").read_text()
ENTRY_POINTS = ("train.py", "evaluate.py", "figures.py")
#: placeholders the README uses where the reader puts their own path
PLACEHOLDERS = ("...", "PATH", "DIR", "BASE.ckpt", "SYN.ckpt", "LCR.ckpt", "<date>/<time>")


def _blocks(lang: str) -> List[Tuple[int, str]]:
    """(line number, text) of every fenced block of ``lang``."""
    out = []
    for m in re.finditer(rf"(?ms)^```{lang}\n(.*?)^```", README):
        out.append((README[: m.start()].count("\n") + 2, m.group(1)))
    return out


#: the comment that marks a command as needing what one machine cannot give (SLURM, several machines):
#: its keys and folders are checked, it is not run
NEEDS_CLUSTER = "(needs a real cluster)"
CLUSTER_ONLY = set()


def readme_commands() -> List[Tuple[str, str, Optional[str]]]:
    """(where, command without its comment, the ``# -> FOLDER`` annotation) for every bash line."""
    cmds = []
    for start, text in _blocks("bash"):
        joined = text.replace("\\\n", " ")
        for i, line in enumerate(joined.splitlines()):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            arrow = re.search(r"#\s*->\s*(\S+)", line)
            cmd = " ".join(shlex.split(line, comments=True))
            cmds.append((f"README.md:{start + i}", cmd, arrow.group(1) if arrow else None))
            if NEEDS_CLUSTER in line:
                CLUSTER_ONLY.add(cmd)
    return cmds


def as_python(cmd: str) -> str:
    """``torchrun --flags... train.py ARGS`` as ``python train.py ARGS`` (the same Hydra command line)."""
    words = shlex.split(cmd)
    if words[0] != "torchrun":
        return cmd
    i = 1
    while i < len(words) and words[i].startswith("-"):
        i += 1 if "=" in words[i] else 2
    return " ".join(["python", *words[i:]])


COMMANDS = readme_commands()
ENTRY_LINES = [(w, as_python(c), a) for w, c, a in COMMANDS
               if as_python(c).startswith("python ") and as_python(c).split()[1] in ENTRY_POINTS]


def _compose(overrides: List[str]):
    return compose(overrides, CONF, return_hydra_config=True)


def entry_overrides(cmd: str) -> Tuple[str, bool, List[List[str]]]:
    """(script, multirun?, the override lists of the first and the last job of a sweep)."""
    args = shlex.split(cmd)[1:]
    script, rest = args[0], args[1:]
    multirun = any(a in ("-m", "--multirun") for a in rest)
    flags = {"-m", "--multirun", "--help", "-h", "--cfg", "-c", "job", "hydra", "all"}
    plain = [a for a in rest if a not in flags]
    first, last = [], []
    for o, raw in zip(OverridesParser.create().parse_overrides(plain), plain):
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            key = raw.split("=", 1)[0]
            first.append(f"{key}={values[0]}")
            last.append(f"{key}={values[-1]}")
        else:
            first.append(raw)
            last.append(raw)
    return script, multirun, [first, last]


def job_dirs(overrides: List[str]) -> Dict[str, str]:
    cfg = _compose(overrides)
    HydraConfig.instance().set_config(cfg)
    try:
        return {"run": str(cfg.hydra.run.dir), "sweep": str(cfg.hydra.sweep.dir)}
    finally:
        HydraConfig.instance().cfg = None


def _pattern(path: str) -> str:
    """A README folder (``multirun/<date>/<time>``) as a regex."""
    return re.escape(path.rstrip("/")).replace(re.escape("<date>"), r"\d{4}-\d\d-\d\d").replace(
        re.escape("<time>"), r"\d\d-\d\d-\d\d")


@functools.lru_cache(maxsize=None)
def produced_folders() -> Tuple[frozenset, frozenset]:
    """The run dirs of the README's single-run train commands, and the README's sweep folders."""
    runs, sweeps = set(), set()
    for _, cmd, arrow in ENTRY_LINES:
        script, multirun, jobs = entry_overrides(cmd)
        if script != "train.py":
            continue
        if multirun:
            if arrow:
                sweeps.add(arrow.rstrip("/"))
        else:
            runs.add(job_dirs(jobs[0])["run"])
    return frozenset(runs), frozenset(sweeps)


# ---------------------------------------------------------------------- default suite
def test_readme_has_commands():
    assert len(ENTRY_LINES) >= 20 and any(a for _, _, a in COMMANDS)


@pytest.mark.parametrize("where,cmd,arrow", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_exists(where, cmd, arrow):
    words = shlex.split(cmd)
    if words[0] == "make":
        targets = re.findall(r"(?m)^([\w-]+):", (ROOT / "Makefile").read_text())
        assert words[1] in targets, (where, words[1])
    elif words[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(words[2]) is not None, (where, words[2])
    elif words[0] == "python":
        assert words[1] in ENTRY_POINTS and (ROOT / words[1]).is_file(), where
    elif words[0] == "torchrun":
        assert as_python(cmd).split()[1] in ENTRY_POINTS, where
    else:
        assert words[0] == "wandb", f"{where}: an unknown command {words[0]!r}"


@pytest.mark.parametrize("where,cmd,arrow", ENTRY_LINES, ids=[c[0] for c in ENTRY_LINES])
def test_entry_point_line_composes(where, cmd, arrow):
    """Every key and option exists (our own check, then Hydra's composition); sweeps say where they go."""
    script, multirun, jobs = entry_overrides(cmd)
    check_cli_keys(shlex.split(cmd)[2:])
    for overrides in jobs:
        dirs = job_dirs(overrides)
    if multirun and script == "train.py":
        assert arrow, f"{where}: a sweep must say where its jobs go (# -> multirun/...)"
        assert re.fullmatch(_pattern(arrow), dirs["sweep"]), (where, arrow, dirs["sweep"])
    elif arrow and script == "train.py":
        assert re.fullmatch(_pattern(arrow), dirs["run"]), (where, arrow, dirs["run"])


def _referenced_outputs() -> List[Tuple[str, str]]:
    """(command, path) for every ``outputs/...`` or ``multirun/...`` path a command reads."""
    found = []
    for _, cmd, _ in COMMANDS:
        if cmd.startswith("python train.py"):
            continue
        for word in shlex.split(cmd):
            value = word.split("=", 1)[-1]
            for p in re.findall(r"(?:outputs|multirun)/[^\s,\]\[']+", value):
                found.append((cmd, p))
    return found


@pytest.mark.parametrize("cmd,path", _referenced_outputs())
def test_read_paths_are_written_by_a_readme_command(cmd, path):
    """``ckpt=outputs/...``, ``wandb sync outputs/...``, ``fgssl.results multirun/...``: the folder is one that
    a README train command really writes (its run dir or its sweep folder)."""
    runs, sweeps = produced_folders()
    ok = any(path == r or path.startswith(r + "/") for r in runs)
    ok = ok or any(re.match(_pattern(s) + r"(/|$)", path) or path.rstrip("/") == s for s in sweeps)
    assert ok, f"{cmd!r} reads {path}, which no README command writes (runs: {sorted(runs)}, sweeps: {sorted(sweeps)})"


def test_repo_paths_in_readme_exist():
    paths = set(re.findall(r"`((?:docs|tests|conf|src|notebooks|data)/[^`\s]*)`", README))
    paths |= set(re.findall(r"\]\(((?:docs)/[^)]+)\)", README))
    assert paths
    for p in sorted(paths):
        file, _, test = p.partition("::")
        target = ROOT / file.rstrip("/")
        if "*" in file or "{" in file or "<" in file:
            continue
        assert target.exists(), p
        if test:
            assert f"def {test}(" in target.read_text(), p


def test_quoted_error_output_is_what_the_command_prints(tmp_path):
    """Each ``text`` block that starts with ``$ python ...`` and quotes an ``fgssl error:`` is run as written."""
    checked = 0
    for where, text in _blocks("text"):
        lines = text.splitlines()
        if not lines[0].startswith("$ python") or not any(line.startswith("fgssl error:") for line in lines):
            continue
        args = shlex.split(lines[0][2:], comments=True)
        r = subprocess.run([sys.executable, str(ROOT / args[1]), *args[2:]], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 2
        assert r.stdout.splitlines() + r.stderr.splitlines() == lines[1:], (where, r.stderr)
        checked += 1
    assert checked >= 1


def test_quoted_metrics_table_fits_its_border():
    """The table in the README is drawn as ``format_table`` draws it: every row as wide as its border."""
    from fgssl.eval.suite import format_table

    for _, text in _blocks("text"):
        rows = [line for line in text.splitlines() if line[:1] in "+|"]
        if not rows:
            continue
        assert len({len(r) for r in rows}) == 1, rows
        # the same layout as the code's: title row, then key | value rows with the values right-aligned
        title = rows[1].strip("| ").strip()
        values = {r.split("|")[1].strip(): float(r.split("|")[2]) for r in rows if r.startswith("| test/")}
        drawn = format_table(values, title).splitlines()
        assert drawn[0].count("+") == rows[0].count("+") == 3 and drawn[1].count("|") == rows[1].count("|") == 2


# ---------------------------------------------------------------------- slow: run every command
def _smoke_workspace(tmp: Path) -> Path:
    """A copy of the entry points and conf/ in which debug=smoke is the default: README commands run as
    written (same run-dir names) but tiny."""
    ws = tmp / "ws"
    ws.mkdir()
    for f in ENTRY_POINTS:
        shutil.copy(ROOT / f, ws / f)
    shutil.copytree(CONF, ws / "conf")
    cfg = (ws / "conf" / "config.yaml").read_text()
    assert "  - debug: null\n" in cfg
    (ws / "conf" / "config.yaml").write_text(cfg.replace("  - debug: null\n", "  - debug: smoke\n"))
    # the smoke profile's CSV logger would hide wandb: keep the README's default logger
    smoke = (ws / "conf" / "debug" / "smoke.yaml").read_text()
    assert "defaults:\n  - override /logger: csv\n" in smoke
    (ws / "conf" / "debug" / "smoke.yaml").write_text(smoke.replace("defaults:\n  - override /logger: csv\n", ""))
    return ws


def _substitute(cmd: str, fake: Dict[str, str]) -> Optional[str]:
    """The README command with its placeholders filled in (None: it needs what this machine lacks)."""
    import torch

    words = shlex.split(cmd)
    if cmd in CLUSTER_ONLY:
        return None  # SLURM or several machines (docs/cluster.md; tests/test_cluster.py, test_torchrun.py)
    if words[0] == "wandb" or "logger.mode=online" in words:
        return None  # an account and the network (wandb offline is checked through the main job's wandb/)
    if words[0] == "make" and words[1] in ("train", "test", "test-all", "install", "bench", "data", "evidence"):
        # the same commands as python train.py / this suite / docs/bench.md / fgssl.data.prepare; evidence
        # is hours of training (tests/test_evidence.py runs its plan with a stand-in for train.py)
        return None
    if words[:3] == ["python", "-m", "fgssl.data.prepare"]:
        return None  # downloads; tests/test_prepare.py runs it against a loopback server
    cpu_ddp = "trainer=ddp" in words and "trainer.accelerator=cpu" in words
    gpu = any(w in ("trainer=gpu", "trainer=ddp", "experiment=paper_r50") for w in words) and not cpu_ddp
    if gpu and not torch.cuda.is_available():
        return None
    for k, v in fake.items():  # also inside ARGS="ckpt=..."
        cmd = cmd.replace(k, v)
    return cmd


@pytest.mark.slow
def test_every_readme_command_runs_tiny(tmp_path, tiny_datasets):
    ws = _smoke_workspace(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true", PYTHONPATH=str(ROOT / "src"),
               FGSSL_CACHE_DIR=str(tmp_path / "cache"))
    main_ckpt = f"{ws}/outputs/mocov2-cub53/default/checkpoints/last.ckpt"
    fake = {"ckpt=...": f"ckpt={main_ckpt}", "ckpt=BASE.ckpt": f"ckpt={main_ckpt}",
            "[SYN.ckpt,LCR.ckpt]": f"[{ws}/outputs/mocov2-cub53/method-mocov2_synthesis-syn/checkpoints/last.ckpt,"
                                   f"{ws}/outputs/mocov2-cub53/method-mocov2_rationale-lcr/checkpoints/last.ckpt]",
            # a folder holding both methods' jobs (only MoCo v2 has SYN jobs among the README's sweeps)
            "figures.sweep_dir=DIR figures.sweep_method=simsiam":
                "figures.sweep_dir=multirun figures.sweep_method=mocov2",
            **tiny_datasets}
    ran, skipped = [], []
    for where, cmd, arrow in COMMANDS:
        real = _substitute(cmd, fake)
        if real is None:
            skipped.append(cmd)
            continue
        if "<date>/<time>" in real:
            real = real.replace("multirun/<date>/<time>", sorted(glob.glob(str(ws / "multirun/2*/*")))[-1])
        words = shlex.split(real)
        if words[0] == "python":
            words[0] = sys.executable
        if words[0] == "make":
            words = ["make", "-s", "-C", str(ROOT), "-o", "install", words[1], f"VENV={sys.prefix}", *words[2:]]
        r = subprocess.run(words, capture_output=True, text=True, cwd=ws, env=env, timeout=900)
        assert r.returncode == 0, (where, real, r.stdout[-2000:], r.stderr[-2000:])
        if arrow and cmd.startswith("python train.py"):  # a sweep's folder is where the README says
            assert [p for p in glob.glob(str(ws / arrow.replace("<date>/<time>", "2*/*")))], (where, arrow)
        ran.append(cmd)
    # the stated outputs of the main job and of the evaluation/figures commands
    run = ws / "outputs" / "mocov2-cub53" / "default"
    for p in ("checkpoints/last.ckpt", "checkpoints/config.yaml", "metrics.json", "wandb",
              "figures/gradcam.png", "figures/variance.png", "metrics_eval_last_linear_max_iter-50_max_images-64.json"):
        assert (run / p).exists(), p
    assert (ws / "multirun" / "syn_seeds" / "results.md").is_file()
    print(f"ran {len(ran)} README commands; skipped (GPU, network or account): {skipped}")
    assert len(ran) >= 20, (ran, skipped)


@pytest.fixture
def tiny_datasets(tmp_path) -> Dict[str, str]:
    """The README's dataset roots and weights paths, pointed at tiny fixtures in the official layouts."""
    import torch
    import torchvision

    from fixtures import make_aircraft, make_cub

    cub = make_cub(tmp_path / "cub")
    air = make_aircraft(tmp_path / "air")
    weights = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    return {"/data/CUB_200_2011": str(cub.root), "/data/aircraft": str(air.root),
            "/models/resnet50-0676ba61.pth": str(weights), "/models/resnet50.pth": str(weights)}
