"""Beyond one machine (issue 16), the parts that run on this machine: a sweep through Hydra's submitit
launcher (``hydra/launcher=submitit_local``: every job a real subprocess started by submitit), and
SLURM's pre-timeout signal with a stand-in ``scontrol``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import CONF, ROOT, compose_cfg, make_imagefolder
from fgssl.cluster import apply_cluster_env, check_launcher_keys, cluster_environment, cluster_plugins
from fgssl.errors import ConfigError, FgsslError
from fgssl.lifecycle import check_devices
from fgssl.submitit_logs import job_log
from signal_hook import signal_hook
from test_resume import (
    KILL_AT_BATCH,
    KILLER,
    _env,
    _overrides,
    _train,
    assert_same_csv,
    assert_same_end,
    reference,  # noqa: F401 - the module-scoped reference run, as a fixture here
)

ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.slow  # two training jobs in parallel subprocesses: ~2 min on a shared 2-core CPU
def test_submitit_local_two_job_sweep_and_results(tmp_path):
    """2 jobs through submitit's local executor, with wandb offline: each job its own process, its own
    metrics.json and its own wandb run, the two runs in one wandb group named after the sweep folder."""
    data = make_imagefolder(tmp_path / "data", classes=3, per_class=6)
    sweep = tmp_path / "alpha-sweep-7"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local",
                        "logger=wandb", "logger.mode=offline",
                        "method=simsiam", "data=imagefolder", f"data.root={data}", "debug=smoke", "data.batch_size=8",
                        "trainer.limit_train_batches=1", "eval.knn_every_n_epochs=0", "eval.max_images=24",
                        "eval.linear_max_iter=20", "trainer.enable_progress_bar=false", "seed=0,1",
                        f"hydra.sweep.dir={sweep}"], cwd=str(ROOT), env=ENV, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in r.stdout + r.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_", 1)[0] for p in jobs] == ["0", "1"]
    assert all((j / "metrics.json").is_file() for j in jobs), "each job has its own metrics.json"
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2, "each job ran as its own submitit job"
    assert f"sweep {sweep}: 2 of 2 job(s) finished, 0 failed" in r.stdout
    ids = set()
    for j in jobs:  # one offline wandb run per job; group and name are fields of its run record (protobuf)
        (run,) = j.glob("wandb/offline-run-*/run-*.wandb")
        record = run.read_bytes()
        ids.add(run.stem)
        assert _pb_string(6, sweep.name) in record, "run_group = the sweep folder's name"
    assert len(ids) == 2, "one wandb run per job"

    res = subprocess.run([sys.executable, "-m", "fgssl.results", str(sweep), "--no-write"], cwd=str(ROOT), env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "2 job(s) with metrics in 1 configuration(s)" in res.stdout and "Missing or failed" not in res.stdout
    for j in jobs:  # the plugin's hydra.job.id is the submitit job id: the link fgssl.results follows to a log
        log = job_log(sweep, j)
        assert log is not None and log.is_file() and log.parent.parent == sweep / ".submitit", (j, log)


def test_results_of_a_submitit_sweep_names_the_log_of_each_failed_or_missing_job(tmp_path):
    """A submitit sweep folder (the layout test_submitit_local_two_job_sweep_and_results checks): job 0
    finished, job 1 failed (error.txt), and submitit job 99_2 died before Hydra made its job folder; each
    is listed with its log."""
    sweep = tmp_path / "sweep"
    for num, jid in ((0, "99_0"), (1, "99_1")):
        job = sweep / f"{num}_seed-{num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
        (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    id: '{jid}'\n    num: {num}\n")
    (sweep / "0_seed-0" / "metrics.json").write_text(json.dumps({"test/retrieval_map": 50.0}))
    (sweep / "1_seed-1" / "error.txt").write_text("fgssl error: data.batch_size=1000 is larger than the dataset\n")
    (sweep / ".submitit" / "%j").mkdir(parents=True)  # submitit's folder before the job ids are known
    for jid in ("99_0", "99_1", "99_2"):
        (sweep / ".submitit" / jid).mkdir(parents=True)
        (sweep / ".submitit" / jid / f"{jid}_0_log.out").write_text("started\n")
    (sweep / ".submitit" / "99_1" / "99_1_0_log.err").write_text("fgssl error: data.batch_size=1000 ...\n")
    (sweep / ".submitit" / "99_2" / "99_2_0_log.err").write_text("ImportError: no module named x\n")
    r = subprocess.run([sys.executable, "-m", "fgssl.results", str(sweep), "--no-write"], cwd=str(ROOT), env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "## Missing or failed jobs (1)" in r.stdout
    assert ("- `1_seed-1` (`seed=1`): failed: fgssl error: data.batch_size=1000 is larger than the dataset (see "
            "error.txt); log `.submitit/99_1/99_1_0_log.err`") in r.stdout, r.stdout
    assert "Submitit jobs without a job directory" in r.stdout
    assert "- submitit job 99_2: log `.submitit/99_2/99_2_0_log.err`: ImportError: no module named x" in r.stdout
    assert "99_0" not in r.stdout


def _pb_string(field: int, text: str) -> bytes:
    """A protobuf string field as it is written in a wandb ``.wandb`` log (RunRecord's run_group is field 6
    in wandb/proto/wandb_internal.proto); short strings only (one-byte length)."""
    data = text.encode()
    assert len(data) < 128
    return bytes([field << 3 | 2, len(data)]) + data


def test_num_nodes_zero_is_one_line():
    with pytest.raises(FgsslError, match=r"trainer.num_nodes=0 must be >= 1"):
        check_devices(compose_cfg(["trainer.num_nodes=0"]))


def test_results_of_a_folder_without_jobs_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fgssl.results", str(tmp_path)], cwd=str(ROOT), env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"fgssl.results: no job directory (with .hydra/overrides.yaml or metrics.json) under {tmp_path}"]


@pytest.mark.slow  # two training runs (~2 min on a shared 2-core CPU) plus the reference run
def test_slurm_pre_timeout_signal_checkpoints_requeues_and_resumes(reference, tmp_path):  # noqa: F811
    """SLURM's pre-timeout signal (``--signal=USR1@90``) mid-epoch: the step finishes, last.ckpt is written
    at it, the job asks to be requeued (a stand-in ``scontrol`` on PATH records the call) and exits; the
    same command (what the requeued job runs) then ends equal to an uninterrupted run."""
    data, ref = reference("device")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    scontrol.chmod(0o755)
    calls = tmp_path / "scontrol.calls"
    run = tmp_path / "job"
    env = _env(KILL_SIGNAL="SIGUSR1", PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
               SCONTROL_LOG=str(calls))
    r = _train(_overrides(data, run), env, script=KILLER)
    assert r.returncode == 128 + 10, r.stderr[-4000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1] == f"stopped by SIGUSR1 at step {KILL_AT_BATCH}; requeued SLURM job 4242; it resumes from " \
                        "last.ckpt", lines[-5:]
    assert calls.read_text() == "requeue 4242\n"
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == KILL_AT_BATCH

    resumed = _train(_overrides(data, run), _env())
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_end(ref, run)
    assert_same_csv(ref, run)


# ---------------------------------------------------------------------- launcher configs and the trainer's shape
def _launcher_sbatch(tmp_path, monkeypatch, overrides):
    """The sbatch script submitit would submit for ``overrides``: the composed ``hydra.launcher`` passed to
    submitit's SlurmExecutor the way the launcher plugin passes it (its launch() maps the keys this way)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf, open_dict
    from submitit import AutoExecutor

    srun = tmp_path / "bin" / "srun"  # submitit's SlurmExecutor wants srun on PATH (nothing runs it here)
    srun.parent.mkdir(exist_ok=True)
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}:{os.environ['PATH']}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.launcher.submitit_folder, cfg.hydra.launcher.name = str(tmp_path / "%j"), "train"
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # as Hydra instantiates the launcher
    assert params.pop("_target_").endswith("SlurmLauncher")
    # the plugin's launch(): AutoExecutor, max_num_timeout at init, base keys as they are, the others prefixed
    ex = AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                      slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return cfg, ex._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")


def test_slurm_launcher_config_one_task_per_gpu_and_time_for_the_checkpoint(tmp_path, monkeypatch):
    cfg, text = _launcher_sbatch(tmp_path, monkeypatch, ["experiment=slurm_example", "hydra.launcher.gpus_per_node=2",
                                            "hydra.launcher.account=lab"])
    lines = set(text.splitlines())
    for want in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=1440", "#SBATCH --nodes=1",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=128GB", "#SBATCH --signal=USR2@300"):
        assert want in lines, (want, text)
    assert cfg.trainer.strategy == "ddp" and cfg.synthesis.name == "syn"
    assert str(cfg.hydra.sweep.dir) == "multirun/slurm_example"
    _, text = _launcher_sbatch(tmp_path, monkeypatch, ["hydra/launcher=slurm", "hydra.launcher.nodes=2",
                                          "hydra.launcher.gpus_per_node=8", "hydra.launcher.partition=a100"])
    lines = set(text.splitlines())
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8"} <= lines, text


@pytest.mark.parametrize("argv,line", [
    (["-m", "hydra/launcher=slurm", "hydra.launcher.partitoin=gpu"],
     "unknown launcher key hydra.launcher.partitoin: hydra/launcher=slurm has no key 'partitoin'; did you mean "
     "hydra.launcher.partition?"),
    (["-m", "experiment=slurm_example", "hydra.launcher.acount=me"],
     "unknown launcher key hydra.launcher.acount: hydra/launcher=slurm has no key 'acount'; did you mean "
     "hydra.launcher.account?"),
    (["-m", "hydra/launcher=local", "hydra.launcher.partition=gpu"],
     "unknown launcher key hydra.launcher.partition: hydra/launcher=local has no key 'partition'"),
    (["-m", "hydra/launcher=slurmm"], "hydra/launcher=slurmm is not a launcher fgssl knows"),
])
def test_bad_launcher_input_is_one_line(argv, line):
    with pytest.raises(ConfigError, match="^" + line.replace("?", r"\?").replace(".", r"\.")):
        check_launcher_keys(argv)
    check_launcher_keys(["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=64"])


def test_bad_launcher_key_from_the_command_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
                        "hydra.launcher.partitoin=gpu"], cwd=str(tmp_path), env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("fgssl error: unknown launcher key hydra.launcher.partitoin")
    assert not (tmp_path / "multirun").exists()


TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "r1", "RANK": "5", "LOCAL_RANK": "1", "GROUP_RANK": "1", "WORLD_SIZE": "8",
                "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SLURM_ENV = {"SLURM_NTASKS": "8", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_NAME": "train",
             "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_ID": "77",
             "SLURM_NODELIST": "node[1-2]"}


@pytest.mark.parametrize("kind,env", [("torchrun", TORCHRUN_ENV), ("SLURM", SLURM_ENV)])
def test_trainer_shape_follows_the_cluster_environment(kind, env, monkeypatch):
    """2 nodes x 4 processes: trainer.num_nodes/devices/strategy follow torchrun's or SLURM's variables,
    read through Lightning's cluster environments, which then accept the shape (their own check)."""
    for k in [*TORCHRUN_ENV, *SLURM_ENV]:
        monkeypatch.delenv(k, raising=False)
    cfg = compose_cfg(["trainer=cpu"])
    assert cluster_environment() is None and apply_cluster_env(cfg) is None
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.trainer.strategy) == (1, 1, "auto")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    line = apply_cluster_env(cfg)
    assert line.startswith(f"fgssl: {kind} environment: 2 node(s) x 4 process(es); trainer.num_nodes=2 "
                           "trainer.devices=4 trainer.strategy=ddp"), line
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.trainer.strategy) == (2, 4, "ddp")
    lightning_env = cluster_environment()
    assert type(lightning_env).__name__ == {"torchrun": "TorchElasticEnvironment", "SLURM": "SLURMEnvironment"}[kind]
    lightning_env.validate_settings(num_devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes)
    assert lightning_env.global_rank() == 5
    if kind == "SLURM":
        assert lightning_env.auto_requeue is False, "fgssl.lifecycle handles the pre-timeout signal"
    import pytorch_lightning as pl
    from lightning_fabric.utilities import rank_zero as fabric_rank_zero
    from pytorch_lightning.utilities import rank_zero

    for module in (rank_zero, fabric_rank_zero):  # the Trainer sets this process-wide rank to 5: put it back after
        monkeypatch.setattr(module.rank_zero_only, "rank", module.rank_zero_only.rank)
    t = cfg.trainer  # a Trainer built with that shape and fgssl's plugin (no process group is started here)
    trainer = pl.Trainer(accelerator="cpu", devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                         plugins=cluster_plugins(), logger=False, enable_checkpointing=False)
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank, trainer.local_rank) == (8, 5, 1, 1)
    assert type(trainer.strategy.cluster_environment) is type(lightning_env)
    assert getattr(trainer.strategy.cluster_environment, "auto_requeue", False) is False


@pytest.mark.slow  # a 1-job submitit sweep run twice over (stop + requeued rerun), plus the reference run
def test_submitit_pre_timeout_signal_checkpoints_and_submitit_requeues(reference, tmp_path):  # noqa: F811
    """Under hydra/launcher=local (submitit's LocalExecutor, which requeues like SLURM does): USR2, submitit's
    pre-timeout signal, arrives mid-epoch at step 9; the step finishes, last.ckpt is written at it, then
    submitit's own handler (chained after fgssl's) checkpoints the job's submission and requeues it; the
    executor reruns it, it resumes, ends equal to an uninterrupted run and continues its wandb run."""
    data, ref = reference("device")
    sweep = tmp_path / "sweep"
    # wandb instead of the CSV log (the CSV log's resume is checked by the scontrol test): the requeued job
    # continues its own wandb run
    args = [a for a in _overrides(data, tmp_path / "unused") if not a.startswith(("hydra.run.dir", "logger="))]
    args += ["logger=wandb", "logger.mode=offline"]
    env = _env(KILL_SIGNAL="SIGUSR2", KILL_ONCE=str(tmp_path / "sent"),
               PYTHONPATH=f"{signal_hook(tmp_path, KILLER)}:{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=local", *args,
                        f"hydra.sweep.dir={sweep}"], cwd=str(ROOT), env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "sent").exists() and f"sweep {sweep}: 1 of 1 job(s) finished, 0 failed" in r.stdout
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    err = job_log(sweep, job)
    log = err.read_text() + err.with_name(err.name.replace("_log.err", "_log.out")).read_text()  # both attempts
    assert (f"stopped by SIGUSR2 at step {KILL_AT_BATCH}; requeueing through submitit (the job resumes from "
            "last.ckpt)") in log, log[-3000:]
    assert "Requeued job" in log, log[-3000:]  # submitit's message: the executor ran the job again
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'}" in log, log[-3000:]
    assert_same_end(ref, job)
    run_id = (job / "wandb_run_id.txt").read_text().strip()
    runs = sorted(p.name for p in (job / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs), (run_id, runs)  # stopped + requeued
