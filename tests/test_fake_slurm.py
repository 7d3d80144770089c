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

from conftest import ROOT

SBATCH = r'''
import os, re, subprocess, sys
text = open(sys.argv[-1]).read()
flags = dict((k, v.strip("'")) for k, v in re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.M))
state = os.environ["FAKE_SLURM_DIR"]
jid = int(os.environ["FAKE_SLURM_FIRST_ID"]) + len(os.listdir(state))
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
        rc = subprocess.call(["bash", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def _fake_slurm(tmp_path: Path) -> dict:
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, code in (("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT)):
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
