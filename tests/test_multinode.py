"""Training across machines, rehearsed on one host: two torchrun launchers (one process each, gloo)
meet through a c10d rendezvous on 127.0.0.1, as two nodes would. One launcher is killed (a node
dies) mid-run; both are started again with --init_from=resume; the result equals one process
accumulating the same batches for the same number of steps."""
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core import checkpoint
from conftest import free_port
from test_train import ROOT, args, assert_same_parameters, run

# on the CPU (gloo) whatever the machine has: both launchers run on this one machine, and two ranks
# cannot share its GPU; the single process they are compared with runs there too
COMMON = ["--lr_decay_iters=1000", "--eval_interval=100000", "--dropout=0.0",
          "--gradient_accumulation_steps=2", "--checkpoint_interval=3", "--device=cpu"]


def process_tree(pid):
    """pid and every process below it (Linux /proc). torchrun starts its workers in sessions of
    their own, so killing a launcher's process group would leave its worker training."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_tree(pid):
    for p in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


class Node:
    """One torchrun launcher, its output in a file (read while it runs, and when a test fails)."""

    def __init__(self, command, log_path):
        self.log_path = Path(log_path)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         text=True, start_new_session=True)

    def output(self):
        return self.log_path.read_text()


def launch_two_nodes(data_root, out, *extra, attempts=3):
    """Two launchers, as on two machines: same command, rendezvous at 127.0.0.1:PORT. A port taken
    after it was picked makes them fail (or wait) before rank 0 prints its config; they are started
    again on a fresh port."""
    out.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        port = free_port()
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=test",
                   "train.py", *args(data_root, out, *COMMON, *extra)]
        nodes = [Node(command, out / f"node{i}-{port}.log") for i in range(2)]
        deadline = time.time() + 120
        while all(n.proc.poll() is None for n in nodes) and time.time() < deadline and not any(
                '"out_dir"' in n.output() for n in nodes):  # rank 0's config: rendezvous passed
            time.sleep(0.2)
        if any('"out_dir"' in n.output() for n in nodes) or attempt == attempts - 1:
            return nodes
        for node in nodes:  # one failed before the rendezvous completed: a fresh port
            kill_tree(node.proc.pid)
            node.proc.wait()


def test_two_launchers_survive_a_dead_node_and_match_one_process(data_root, tmp_path):
    out = tmp_path / "nodes"
    nodes = launch_two_nodes(data_root, out, "--max_iters=100000")
    try:
        deadline = time.time() + 300
        while not (out / "last.pt").exists():  # rank 0 wrote a checkpoint: the run is under way
            assert time.time() < deadline and all(n.proc.poll() is None for n in nodes), \
                "".join(n.output()[-3000:] for n in nodes)
            time.sleep(0.2)
        kill_tree(nodes[1].proc.pid)  # a node dies: its launcher and its training process
        nodes[1].proc.wait()
        nodes[0].proc.wait(timeout=120)
    finally:  # nothing may outlive the test
        for node in nodes:
            if node.proc.poll() is None:
                kill_tree(node.proc.pid)
    assert nodes[0].proc.returncode != 0, nodes[0].output()[-3000:]  # it noticed, and stopped
    stopped_at = checkpoint.load(out / "last.pt")["iter_num"]
    assert stopped_at >= 3 and stopped_at % 3 == 0

    finish = stopped_at + 4
    nodes = launch_two_nodes(data_root, out, f"--max_iters={finish}", "--init_from=resume")
    try:
        for node in nodes:
            node.proc.wait(timeout=280)
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                kill_tree(node.proc.pid)
    assert all(n.proc.returncode == 0 for n in nodes), "\n".join(n.output()[-3000:] for n in nodes)
    resumed = checkpoint.load(out / "last.pt")
    assert resumed["iter_num"] == finish and len(resumed["rng"]) == 2

    single = run(data_root, tmp_path / "single", *COMMON, f"--max_iters={finish}")
    assert_same_parameters(single["model"], resumed["model"], atol=1e-5)
