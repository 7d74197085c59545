"""Threads by work size (engine/kernels/threads.py): small work inline, big work capped by the
caller's torch setting and the CPUs the process may use; the library never sets thread counts."""

import ast
import threading
from pathlib import Path

import torch

from tokendyn.engine.kernels import threads

SRC = Path(__file__).resolve().parents[2] / "src" / "tokendyn"


def test_small_work_runs_inline_on_the_calling_thread():
    assert threads.workers_for(1) == 1
    assert threads.workers_for(threads.PAIRS_PER_THREAD) == 1
    seen: list[int] = []
    jobs = [(lambda: seen.append(threading.get_ident()), ()) for _ in range(3)]
    threads.run_jobs(jobs, threads.workers_for(10))
    assert seen == [threading.get_ident()] * 3


def test_big_work_is_capped_by_torch_threads_and_available_cpus():
    cap = min(torch.get_num_threads(), threads.available_cpus())
    assert threads.workers_for(10**12) == cap
    assert threads.workers_for(2 * threads.PAIRS_PER_THREAD) == min(2, cap)


def test_cgroup_quota_is_read(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_cpus(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads._cgroup_cpus(v1) == 2.0


def test_only_the_cli_sets_process_wide_thread_counts():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in (
                "set_num_threads",
                "set_num_interop_threads",
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
