"""A stand-in for SLURM's (or submitit's timer's) pre-timeout signal inside a job that submitit starts.

The job's processes are started by submitit (its local executor, or a stand-in ``srun``), not by the test,
so test_resume's ``KILLER`` callback (a signal at a given training step) is installed through a
``sitecustomize.py`` on PYTHONPATH: in the task of global rank 0 only, once (the ``KILL_ONCE`` marker file
is made when it is installed, so the requeued run of the job is left alone)."""

from __future__ import annotations

from pathlib import Path


def signal_hook(tmp_path: Path, killer: str, only_var: str = "", only_value: str = "") -> Path:
    """A folder to put first on PYTHONPATH; ``only_var=only_value`` limits the hook to one job of a sweep."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "_fgssl_kill.py").write_text(killer.split("run.build_trainer = build_trainer")[0] +
                                         "run.build_trainer = build_trainer\n")
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "once = os.environ.get('KILL_ONCE')\n"
        "task = os.environ.get('SUBMITIT_LOCAL_GLOBALID') or os.environ.get('SLURM_PROCID')  # a submitit task\n"
        f"mine = {only_var!r} == '' or os.environ.get({only_var!r}) == {only_value!r}\n"
        "if task == '0' and mine and once and not os.path.exists(once):\n"
        "    open(once, 'w').close()\n"
        "    import _fgssl_kill  # noqa: F401\n")
    return hook
