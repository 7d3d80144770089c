"""A SLURM sweep through the real launcher path on one machine: ``hydra/launcher=slurm`` -> Hydra's submitit
plugin -> submitit's SlurmExecutor -> ``sbatch`` -> ``srun`` -> one process per task, with stand-ins for
``sbatch``, ``srun`` and ``sacct`` on PATH that run the job script here (CPU, gloo, localhost) and set the
variables SLURM sets. What runs is fgssl's: the tasks find the SLURM environment through Lightning and
become one DDP process group of ``tasks_per_node = gpus_per_node`` processes (issue 16)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, make_imagefolder

SBATCH = r'''
import os, re, subprocess, sys
text = open(sys.argv[-1]).read()
flags = dict((k, v.strip("'")) for k, v in re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.M))
state = os.environ["FAKE_SLURM_DIR"]
jid = int(os.environ["FAKE_SLURM_FIRST_ID"]) + len([d for d in os.listdir(state) if d.isdigit()])
os.mkdir(os.path.join(state, str(jid)))
with open(os.path.join(state, "sbatch_scripts.txt"), "a") as fh:
    fh.write(text + "\n")
tasks = [None]
if "array" in flags:
    lo, hi = flags["array"].split("%")[0].split("-")
    tasks = list(range(int(lo), int(hi) + 1))
per_node, nodes = int(flags.get("ntasks-per-node", 1)), int(flags.get("nodes", 1))
base = dict(os.environ, SLURM_JOB_NAME=flags.get("job-name", "job"), SLURM_NNODES=str(nodes),
            SLURM_JOB_NUM_NODES=str(nodes), SLURM_NTASKS=str(nodes * per_node), SLURM_NTASKS_PER_NODE=str(per_node),
            SLURM_JOB_NODELIST="localhost", SLURM_NODELIST="localhost")
# the array's tasks one after another (a 2-core machine), in the background as SLURM would
runs = []
for i, a in enumerate(tasks):
    env = dict(base, SLURM_JOB_ID=str(jid + 1 + i))
    if a is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(jid), SLURM_ARRAY_TASK_ID=str(a))
    name = f"{jid}_{a}" if a is not None else str(jid)
    runs.append((name, env))
script = sys.argv[-1]
pid = os.fork()
if pid == 0:  # detached: sbatch's caller reads its output to the end
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for name, env in runs:
        while True:  # a task requeued (scontrol requeue, below) runs again when it has ended, as in SLURM
            rc = subprocess.call(["bash", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            marker = os.path.join(state, "requeue", name)
            if not os.path.exists(marker):
                break
            os.remove(marker)
        open(os.path.join(state, str(jid), name), "w").write("COMPLETED" if rc == 0 else "FAILED")
    os._exit(0)
print(f"Submitted batch job {jid}")
'''

SRUN = r'''
import os, subprocess, sys
args = sys.argv[1:]
out = err = None
while args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        value = args.pop(0)
        if flag == "--output":
            out = value
        else:
            err = value
cmd = args
procs = []
for t in range(int(os.environ["SLURM_NTASKS"])):  # one node: every task here
    def sub(p):
        return (p.replace("%A", os.environ.get("SLURM_ARRAY_JOB_ID", "")).replace(
            "%a", os.environ.get("SLURM_ARRAY_TASK_ID", "")).replace("%j", os.environ["SLURM_JOB_ID"])
            .replace("%t", str(t)))
    env = dict(os.environ, SLURM_PROCID=str(t), SLURM_LOCALID=str(t), SLURM_NODEID="0")
    os.makedirs(os.path.dirname(sub(out)), exist_ok=True)
    fo = open(sub(out), "a")
    fe = open(sub(err), "a") if err else fo
    procs.append(subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe))
sys.exit(max(p.wait() for p in procs))
'''

SACCT = r'''
import os, sys
state = os.environ["FAKE_SLURM_DIR"]
ids = sys.argv[sys.argv.index("-j") + 1].split(",")
print("JobID|State|NodeList")
for jid in ids:
    folder = os.path.join(state, jid.split("_")[0])
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        print(f"{name}|{open(os.path.join(folder, name)).read()}|localhost")
'''


SCONTROL = r'''
import os, sys
state = os.environ["FAKE_SLURM_DIR"]
with open(os.path.join(state, "scontrol_calls.txt"), "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\n")
if sys.argv[1] == "requeue":
    os.makedirs(os.path.join(state, "requeue"), exist_ok=True)
    open(os.path.join(state, "requeue", sys.argv[2]), "w").close()
'''


def _fake_slurm(tmp_path: Path) -> dict:
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, code in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{code}")
        (bin_dir / name).chmod(0o755)
    return dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SLURM_DIR=str(state),
                FAKE_SLURM_FIRST_ID=str(random.randint(4000, 4900) * 10))


@pytest.mark.slow  # 2 jobs x 2 processes (~2 min on a shared 2-core CPU)
def test_slurm_launcher_sweep_runs_each_job_as_a_ddp_group_of_its_tasks(tmp_path):
    env = _fake_slurm(tmp_path)
    sweep = tmp_path / "sweep"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
                        "hydra.launcher.partition=cpu", "hydra.launcher.gpus_per_node=2",
                        "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "debug=smoke",
                        "data.batch_size=8", "eval.knn_every_n_epochs=0", "trainer.enable_progress_bar=false",
                        "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Submitit 'slurm' sweep output dir" in r.stdout + r.stderr
    script = (tmp_path / "slurm" / "sbatch_scripts.txt").read_text()
    for line in ("#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2", "#SBATCH --partition=cpu",
                 "#SBATCH --signal=USR2@300", "#SBATCH --array=0-1%2"):
        assert line in script.splitlines(), (line, script)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1"]
    for j in jobs:
        assert json.loads((j / "metrics.json").read_text())["steps"] == 2
        jid = (j / ".hydra" / "hydra.yaml").read_text().split("id: ", 1)[1].split()[0].strip("'\"")
        out0 = (sweep / ".submitit" / jid / f"{jid}_0_log.out").read_text()
        assert ("fgssl: SLURM environment: 1 node(s) x 2 process(es); trainer.num_nodes=1 trainer.devices=2 "
                "trainer.strategy=ddp") in out0, out0[-2000:]
        assert "MEMBER: 2/2" in (sweep / ".submitit" / jid / f"{jid}_1_log.err").read_text() + \
            (sweep / ".submitit" / jid / f"{jid}_1_log.out").read_text(), "task 1 joined the process group"
    assert f"sweep {sweep}: 2 of 2 job(s) finished, 0 failed" in r.stdout


@pytest.mark.slow  # 2 jobs x 2 processes x 12 steps, one of them stopped and requeued (~3 min, shared 2-core CPU)
def test_slurm_pre_timeout_signal_requeues_through_scontrol_and_the_job_resumes_exactly(tmp_path):
    """SLURM's pre-timeout USR2 reaches rank 0 of job 0 at step 9 (2 tasks, DDP): both ranks stop after that
    step, last.ckpt is written, submitit's handler calls ``scontrol requeue <job>``; the stand-in SLURM runs
    the job again, it resumes and ends equal to job 1, the same run without the signal (the two jobs differ
    only in an evaluation knob that changes no number)."""
    from signal_hook import signal_hook
    from test_resume import KILLER, _env, _overrides, assert_same_csv, assert_same_end

    data = make_imagefolder(tmp_path / "data", classes=3, per_class=16)
    env = {**_fake_slurm(tmp_path), **{k: v for k, v in _env().items() if k.startswith(("KILL", "FGSSL"))}}
    hook = signal_hook(tmp_path, KILLER, "SLURM_ARRAY_TASK_ID", "0")  # job 0 only
    env.update(KILL_SIGNAL="SIGUSR2", KILL_ONCE=str(tmp_path / "sent"),
               PYTHONPATH=f"{hook}:{os.environ.get('PYTHONPATH', '')}")
    sweep = tmp_path / "sweep"
    args = [a for a in _overrides(data, tmp_path / "unused") if not a.startswith(("hydra.run.dir", "data.batch_size"))]
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm",
                        "hydra.launcher.gpus_per_node=2", "trainer=ddp", "trainer.accelerator=cpu",
                        "trainer.precision=32-true", "data.batch_size=4", *args, "eval.retrieval_chunk=1024,512",
                        f"hydra.sweep.dir={sweep}"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "sent").exists(), "the signal was sent"
    calls = (tmp_path / "slurm" / "scontrol_calls.txt").read_text().splitlines()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    jid = (jobs[0] / ".hydra" / "hydra.yaml").read_text().split("id: ", 1)[1].split()[0].strip("'\"")
    assert calls == [f"requeue {jid}"], calls
    out = (sweep / ".submitit" / jid / f"{jid}_0_log.out").read_text() + \
        (sweep / ".submitit" / jid / f"{jid}_0_log.err").read_text()
    assert "stopped by SIGUSR2 at step 9; requeueing through submitit (the job resumes from last.ckpt)" in out
    assert f"Requeued job {jid}" in out and f"resuming from {jobs[0] / 'checkpoints' / 'last.ckpt'}" in out
    assert_same_end(jobs[1], jobs[0])
    assert_same_csv(jobs[1], jobs[0])
