"""Floors (colour histogram), the learning curve, and the paired comparison of fgssl.results."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

import fgssl.run
from conftest import compose_cfg
from fgssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fgssl.eval.colorhist import ColorHistogram
from fgssl.eval.suite import METRIC_KEYS
from fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()


def _normalised(rgb01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb01 - mean) / std


def test_colorhist_counts_the_pixels_of_each_colour_cell():
    img = torch.zeros(1, 3, 4, 4)
    img[0, 0, :2] = 1.0  # top half pure red, bottom half black
    h = ColorHistogram(bins=2).embed(_normalised(img))
    assert h.shape == (1, 8)
    red, black = (1 * 2 + 0) * 2 + 0, 0
    expected = torch.zeros(8)
    expected[red] = expected[black] = 0.5 ** 0.5  # 8 pixels each, L2-normalised
    assert torch.allclose(h[0], expected, atol=1e-5)
    # same colours in another layout: same histogram; another colour: orthogonal
    flipped = ColorHistogram(bins=2).embed(_normalised(img.flip(2)))
    assert torch.allclose(flipped, h, atol=1e-5)
    blue = torch.zeros(1, 3, 4, 4)
    blue[0, 2] = 1.0
    assert ColorHistogram(bins=2).embed(_normalised(blue)) @ h[0] == pytest.approx(0.0)


def test_evaluate_colorhist_floor_writes_its_own_file(tmp_path):
    cfg = compose_cfg(["ckpt=colorhist", "debug=smoke", "trainer.enable_progress_bar=false"], tmp_path)
    m = fgssl.run.evaluate(cfg)
    assert set(METRIC_KEYS) <= set(m)
    name = fgssl.rundir.eval_metrics_name("colorhist", cfg.eval)
    assert name.startswith("metrics_eval_colorhist")
    data = json.loads((tmp_path / name).read_text())
    assert data["ckpt"] == "colorhist" and data["test/retrieval_map"] == pytest.approx(m["test/retrieval_map"])
    assert not list(tmp_path.glob("metrics_eval_random*.json"))


def _weights(path):
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_learning_curve_points_and_training_unchanged(tmp_path):
    """eval.every_n_epochs=1 writes epochs 0, 1, 2 to curve.json and trains exactly the weights of a run
    without a curve (the evaluation restores modes and RNG state, and leaves BN buffers alone)."""
    common = ["debug=smoke", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "eval.knn_every_n_epochs=0"]
    fgssl.run.train(compose_cfg(common, tmp_path / "plain"))
    m = fgssl.run.train(compose_cfg([*common, "eval.every_n_epochs=1"], tmp_path / "curve"))
    points = json.loads((tmp_path / "curve" / "curve.json").read_text())["points"]
    assert [p["epoch"] for p in points] == [0, 1, 2]
    assert [p["step"] for p in points] == [0, 2, 4]
    assert points[-1]["test/retrieval_map"] == pytest.approx(m["test/retrieval_map"])
    assert points[0]["test/retrieval_map"] != pytest.approx(points[-1]["test/retrieval_map"])
    a, b = _weights(tmp_path / "plain" / "checkpoints" / "last.ckpt"), _weights(tmp_path / "curve" / "checkpoints" /
                                                                                "last.ckpt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the learning curve changed the trained weights"
    assert not (tmp_path / "plain" / "curve.json").exists()


def test_learning_curve_bad_value_is_one_line(tmp_path):
    from fgssl.errors import FgsslError

    with pytest.raises(FgsslError, match="eval.every_n_epochs=-1"):
        fgssl.run.train(compose_cfg(["debug=smoke", "eval.every_n_epochs=-1"], tmp_path))


def test_results_floor_rows_and_paired_differences(tmp_path, capsys):
    from scipy.stats import t

    from fgssl import results
    from test_results import make_job

    root = tmp_path / "sweep"
    base = {0: 10.0, 1: 12.0, 2: 11.0}
    syn = {0: 11.0, 1: 12.5, 2: 13.0}  # paired differences 1.0, 0.5, 2.0
    n = 0
    for name, vals in (("none", base), ("syn", syn)):
        for seed, v in vals.items():
            make_job(root, n, [f"synthesis={name}", f"seed={seed}"], {"test/retrieval_map": v, "test/linear_wd": 1e-05},
                     seed=seed)
            n += 1
    (root / "floors" / "colorhist").mkdir(parents=True)
    (root / "floors" / "colorhist" / "metrics_eval_colorhist.json").write_text(json.dumps({"test/retrieval_map": 6.0}))
    (root / "floors" / "random").mkdir(parents=True)
    (root / "floors" / "random" / "metrics_eval_random.json").write_text(json.dumps({"test/retrieval_map": 4.5}))

    assert results.main([str(root), "--baseline", "synthesis=none", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| floor: colour histogram (ckpt=colorhist) | 1 | – | 6.00 |" in out
    assert "| floor: untrained network (ckpt=random) | 1 | – | 4.50 |" in out
    assert "| 1e-05 ± 0.00 |" in out, "a small non-zero value (the probe's wd) is not printed as 0.00"
    d = [1.0, 0.5, 2.0]
    m = sum(d) / 3
    half = t.ppf(0.975, 2) * statistics.stdev(d) / 3 ** 0.5
    assert f"| synthesis=syn | 3 | {m:+.2f} [{m - half:+.2f}, {m + half:+.2f}] |" in out
    # a baseline that names no configuration, or several: one line, exit 2
    assert results.main([str(root), "--baseline", "synthesis=lcr", "--no-write"]) == 2
    assert "matches 0 configurations" in capsys.readouterr().err


def test_curves_figure_from_curve_files_and_floors(tmp_path, capsys):
    from fgssl import curves

    for run, vals in (("a", [5.0, 6.0, 8.0]), ("b", [5.0, 4.0, 3.0])):
        (tmp_path / run).mkdir()
        pts = [{"epoch": e, "step": 10 * e, "test/retrieval_map": v, "test/knn_top1": v} for e, v in enumerate(vals)]
        (tmp_path / run / "curve.json").write_text(json.dumps({"points": pts}))
    (tmp_path / "metrics_eval_colorhist.json").write_text(json.dumps({"test/retrieval_map": 6.0}))
    found, floors = curves.collect([tmp_path])
    assert sorted(found) == ["a", "b"] and [p["test/retrieval_map"] for p in found["a"]] == [5.0, 6.0, 8.0]
    assert list(floors) == ["floor: colour histogram (ckpt=colorhist)"]
    assert curves.main([str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 10_000
    assert curves.main([str(tmp_path / "a" / "..")[:-3] + "missing"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert curves.main([str(empty)]) == 2
    assert "no curve.json" in capsys.readouterr().err


def test_evidence_collect_copies_finished_records_only(tmp_path):
    from fgssl import evidence
    from test_results import make_job

    src, dst = tmp_path / "sweep", tmp_path / "docs"
    done = make_job(src, 0, ["seed=0"], {"test/retrieval_map": 5.0}, seed=0)
    (done / "checkpoints" / "last.ckpt").write_bytes(b"x" * 100)
    (done / "curve.json").write_text("{}")
    make_job(src, 1, ["seed=1"], None, seed=1)  # running: no metrics.json
    (src / "floors").mkdir()
    (src / "floors" / "metrics_eval_colorhist.json").write_text("{}")
    assert evidence.main(["collect", str(src), str(dst)]) == 0
    copied = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert copied == sorted([f"{done.name}/metrics.json", f"{done.name}/curve.json",
                             f"{done.name}/checkpoints/config.yaml", f"{done.name}/.hydra/overrides.yaml",
                             "floors/metrics_eval_colorhist.json"])


def test_evidence_plan_runs_only_unrecorded_jobs_and_records_them(tmp_path, monkeypatch, capsys):
    """The plan is floors + 7 rows x seeds; a job with a record is skipped; a finished job's record is
    copied (never its checkpoint); a failed job is reported and the rest still run."""
    import subprocess

    from fgssl import evidence

    jobs = evidence.plan([0, 1])
    assert len(jobs) == 2 + 7 * 2 and [j.name for j in jobs[:2]] == ["floors/colorhist", "floors/random"]
    assert jobs[2].name == "mocov2/synthesis_none_rationale_none_seed_0"
    assert jobs[3].name == "simsiam/synthesis_none_rationale_none_seed_0"  # both base rows first
    record, work = tmp_path / "record", tmp_path / "work"
    (record / jobs[2].name).mkdir(parents=True)
    (record / jobs[2].name / "metrics.json").write_text("{}")  # recorded by an earlier session
    ran, gap_evals = [], []

    def fake_run(cmd, cwd, **kw):
        if "eval.feature=gap" in cmd:  # an LCR row's GAP evaluation of its checkpoint
            ckpt = Path([c for c in cmd if c.startswith("ckpt=")][0].split("=", 1)[1])
            (ckpt.parent.parent / "metrics_eval_last_feature-gap.json").write_text("{}")
            gap_evals.append(ckpt)
            return subprocess.CompletedProcess(cmd, 0)
        run_dir = Path([c for c in cmd if c.startswith("hydra.run.dir=")][0].split("=", 1)[1])
        ran.append(cmd)
        if "seed=1" in cmd and "method=simsiam" in cmd:
            return subprocess.CompletedProcess(cmd, 1)  # a failing job
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text("[]")
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
        name = "metrics_eval_colorhist.json" if "ckpt=colorhist" in cmd else (
            "metrics_eval_random.json" if "ckpt=random" in cmd else "metrics.json")
        (run_dir / name).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(evidence.subprocess, "run", fake_run)
    args = ["--seeds", "0,1", "--work", str(work), "--record", str(record)]
    assert evidence.main(["run", *args]) == 1
    assert len(ran) == len(jobs) - 1
    assert any(c[1].endswith("evaluate.py") and "ckpt=random" in c for c in ran)
    assert all("experiment=cpu_evidence" in c for c in ran)
    assert (record / "floors" / "random" / "metrics_eval_random.json").is_file()
    assert (record / "simsiam/synthesis_syn_rationale_none_seed_0" / "metrics.json").is_file()
    assert not list(record.rglob("*.ckpt"))
    assert "failed: simsiam/synthesis_none_rationale_none_seed_1" in capsys.readouterr().err
    # every LCR row that ran (3 per seed; SimSiam seed 1 failed) is evaluated with GAP too, and that is recorded
    assert sorted(c.parent.parent.parent.name + "/" + c.parent.parent.name for c in gap_evals) == sorted(
        f"{m}/synthesis_{s}_rationale_lcr_seed_{seed}" for seed in (0, 1)
        for m, s in [("mocov2", "none"), ("mocov2", "syn"), ("simsiam", "none")] if (m, seed) != ("simsiam", 1))
    assert len(list(record.rglob("metrics_eval_last_feature-gap.json"))) == 5
    ran.clear()
    assert evidence.main(["run", *args]) == 1  # a rerun retries only the failed jobs
    assert len(ran) == 3
    assert evidence.main(["status", *args, "--shard", "0/2"]) == 0
    with pytest.raises(SystemExit, match="--shard '2/2' must be I/N"):
        evidence.main(["run", *args, "--shard", "2/2"])


def test_checkpoint_config_from_an_older_version_gets_new_keys_defaults(tmp_path):
    """A run trained before a config key existed (here data.pipeline, eval.every_n_epochs) stays
    evaluable: the saved config is laid over the schema. A key the schema does not know is one error."""
    from omegaconf import OmegaConf

    from fgssl.errors import FgsslError
    from fgssl.rundir import load_run_config

    cfg = OmegaConf.to_container(compose_cfg(["debug=smoke"]), resolve=True)
    del cfg["data"]["pipeline"], cfg["eval"]["every_n_epochs"]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    run_cfg = load_run_config(tmp_path / "checkpoints" / "last.ckpt")
    assert run_cfg.data.pipeline == "auto" and run_cfg.eval.every_n_epochs == 0
    assert run_cfg.data.image_size == cfg["data"]["image_size"]
    cfg["data"]["shiny_new_knob"] = 1
    (tmp_path / "checkpoints" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(FgsslError, match="does not fit this version of fgssl's config: .*shiny_new_knob"):
        load_run_config(tmp_path / "checkpoints" / "last.ckpt")


def test_evidence_ablation_rows_are_their_own_jobs(tmp_path, capsys):
    """--ablations plans the diagnosis rows: each carries its extra override before the seed, has a folder
    of its own (never a default row's) and is paired by seed with the default rows."""
    from fgssl import evidence

    default = {j.name for j in evidence.plan([0, 1])}
    abl = evidence.plan([0, 1], evidence.ABLATIONS)[2:]
    assert len(abl) == 2 * len(evidence.ABLATIONS)
    assert abl[0].overrides == ("method=mocov2", "synthesis=syn", "rationale=none", "synthesis.decoder_lr=0.001",
                                "seed=0")
    assert not {j.name for j in abl} & default and len({j.name for j in abl}) == len(abl)
    cmd = abl[0].command("cpu_evidence", tmp_path / "x")
    assert "synthesis.decoder_lr=0.001" in cmd and "seed=0" in cmd
    assert evidence.main(["status", "--ablations", "--seeds", "0", "--record", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "0 of 5 job(s)" in out and "rationale.weight_1.0_seed_0" in out


def test_evidence_jobs_run_concurrently_on_split_cores_and_are_all_recorded(tmp_path, monkeypatch, capsys):
    """--jobs 2 keeps two jobs in flight (the next starts when either ends), gives each half the cores,
    writes each job's output to its run folder, records every finished job and reports the failed one."""
    from fgssl import evidence

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(evidence, "usable_cores", lambda: 4)
    live, peak, envs = [], [0], []

    class FakeProc:
        def __init__(self, cmd, cwd, env, stdout, stderr):
            self.cmd, self.polls = cmd, 0
            self.run_dir = Path([c for c in cmd if c.startswith(("hydra.run.dir=", "out_dir="))][0].split("=", 1)[1])
            envs.append(env)
            stdout.write("training...\n")
            live.append(self)
            peak[0] = max(peak[0], len(live))

        def poll(self):
            self.polls += 1
            if self.polls < (3 if "method=mocov2" in self.cmd else 1):  # MoCo jobs take longer
                return None
            live.remove(self)
            if {"seed=1", "method=simsiam", "synthesis=none", "rationale=none"} <= set(self.cmd):
                return 1
            name = "metrics_eval_colorhist.json" if "ckpt=colorhist" in self.cmd else (
                "metrics_eval_random.json" if "ckpt=random" in self.cmd else "metrics.json")
            (self.run_dir / name).write_text("{}")
            return 0

        def terminate(self):
            raise AssertionError("nothing is left running after a normal end")

    monkeypatch.setattr(evidence.subprocess, "Popen", FakeProc)
    inline = []

    def gap_eval(cmd, cwd, env, stdout, stderr):
        assert "eval.feature=gap" in cmd, "--jobs 2 runs no training job inline"
        assert env["OMP_NUM_THREADS"] == "2" and stdout is not None  # the job's share, into its evidence.log
        inline.append(cmd)
        return evidence.subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(evidence.subprocess, "run", gap_eval)
    record, work = tmp_path / "record", tmp_path / "work"
    args = ["--seeds", "0,1", "--work", str(work), "--record", str(record), "--jobs", "2"]
    orig = evidence.run_jobs
    monkeypatch.setattr(evidence, "run_jobs", lambda *a, **k: orig(*a, **{**k, "poll_s": 0.0}))
    assert evidence.main(["run", *args]) == 1
    assert peak[0] == 2 and not live and len(inline) == 6  # 3 LCR rows x 2 seeds
    assert all(e["OMP_NUM_THREADS"] == "2" and e["MKL_NUM_THREADS"] == "2" for e in envs)
    assert len(envs) == 2 + 7 * 2
    recorded = {p.parent.relative_to(record).as_posix() for p in record.rglob("metrics*.json")}
    assert len(recorded) == len(envs) - 1 and "simsiam/synthesis_none_rationale_none_seed_1" not in recorded
    assert (work / "mocov2/synthesis_syn_rationale_lcr_seed_1/evidence.log").read_text() == "training...\n"
    out, err = capsys.readouterr()
    assert "done: mocov2/synthesis_none_rationale_none_seed_0 after" in out
    assert "FAILED (exit 1" in out and "failed: simsiam/synthesis_none_rationale_none_seed_1" in err
    assert evidence.main(["run", *args[:-2], "--jobs", "0"]) == 2
    assert "--jobs 0 must be at least 1" in capsys.readouterr().err
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert evidence._job_env(2) is None  # the user's own thread count wins


def test_evidence_interrupted_pool_stops_its_jobs(tmp_path, monkeypatch):
    """Ctrl-C while jobs run: every running job is terminated and waited for (a rerun resumes them)."""
    from fgssl import evidence

    stopped = []

    class FakeProc:
        def __init__(self, cmd, **kw):
            self.name = cmd[-1]

        def poll(self):
            raise KeyboardInterrupt

        def terminate(self):
            stopped.append(self.name)

        def wait(self):
            return -15

    monkeypatch.setattr(evidence.subprocess, "Popen", FakeProc)
    jobs = evidence.plan([0])[2:5]
    with pytest.raises(KeyboardInterrupt):
        evidence.run_jobs(jobs, "cpu_evidence", tmp_path / "w", tmp_path / "r", n_jobs=2, poll_s=0.0)
    assert len(stopped) == 2 and not (tmp_path / "r").exists()


def test_curves_group_seeds_into_mean_and_std_per_configuration(tmp_path, capsys):
    """--group-seeds: runs whose labels differ only in the seed become one line (mean over the seeds, sample
    std, epochs every seed has); --only keeps matching labels, and a filter matching nothing is one line."""
    import statistics

    from fgssl import curves

    runs = {"mocov2/synthesis_syn_seed_0": [5.0, 6.0, 8.0], "mocov2/synthesis_syn_seed_1": [5.0, 7.0],
            "mocov2/synthesis_syn_seed_2": [6.0, 8.0, 9.0], "mocov2/synthesis_none_seed_0": [4.0, 4.5, 5.0]}
    for run, vals in runs.items():
        (tmp_path / run).mkdir(parents=True)
        pts = [{"epoch": 2 * e, "test/retrieval_map": v, "test/knn_top1": 10 * v} for e, v in enumerate(vals)]
        (tmp_path / run / "curve.json").write_text(json.dumps({"points": pts}))
    found, _ = curves.collect([tmp_path])
    grouped = curves.group_seeds(found)
    assert sorted(grouped) == ["mocov2/synthesis_none (1 seed)", "mocov2/synthesis_syn (3 seeds)"]
    syn = grouped["mocov2/synthesis_syn (3 seeds)"]
    assert [p["epoch"] for p in syn] == [0, 2]  # seed 1 has no epoch-4 point
    assert syn[1]["test/retrieval_map"] == pytest.approx(7.0)
    assert syn[1]["test/retrieval_map/std"] == pytest.approx(statistics.stdev([6.0, 7.0, 8.0]))
    assert syn[1]["test/knn_top1"] == pytest.approx(70.0)
    assert grouped["mocov2/synthesis_none (1 seed)"][2]["test/retrieval_map/std"] == 0.0
    out = tmp_path / "g.png"
    assert curves.main([str(tmp_path), "--group-seeds", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and "2 curve(s)" in capsys.readouterr().out
    assert curves.main([str(tmp_path), "--only", "seed_0", "--out", str(out)]) == 0
    assert "2 curve(s)" in capsys.readouterr().out
    assert curves.main([str(tmp_path), "--only", "seed_7", "--out", str(out)]) == 2
    assert "--only 'seed_7' matches none of the 4 runs" in capsys.readouterr().err
