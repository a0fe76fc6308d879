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

from training import checkpoint
from conftest import free_port
from test_train import ROOT, args, assert_same_parameters, run

COMMON = ["--lr_decay_iters=1000", "--eval_interval=100000", "--dropout=0.0",
          "--gradient_accumulation_steps=2", "--checkpoint_interval=3"]


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


def launch_two_nodes(data_root, out, *extra):
    """Two launchers, as on two machines: same command, rendezvous at HOST:PORT."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=test",
               "train.py", *args(data_root, out, *COMMON, *extra)]
    return [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True) for _ in range(2)]


def test_two_launchers_survive_a_dead_node_and_match_one_process(data_root, tmp_path):
    out = tmp_path / "nodes"
    nodes = launch_two_nodes(data_root, out, "--max_iters=100000")
    try:
        deadline = time.time() + 300
        while not (out / "last.pt").exists():  # rank 0 wrote a checkpoint: the run is under way
            assert time.time() < deadline and all(n.poll() is None for n in nodes), \
                "".join(n.communicate()[0][-3000:] for n in nodes)
            time.sleep(0.2)
        kill_tree(nodes[1].pid)  # a node dies: its launcher and its training process
        nodes[1].wait()
        survivor_output = nodes[0].communicate(timeout=120)[0]
    finally:  # nothing may outlive the test
        for node in nodes:
            if node.poll() is None:
                kill_tree(node.pid)
    assert nodes[0].returncode != 0, survivor_output[-3000:]  # it noticed, and stopped
    stopped_at = checkpoint.load(out / "last.pt")["iter_num"]
    assert stopped_at >= 3 and stopped_at % 3 == 0

    finish = stopped_at + 4
    nodes = launch_two_nodes(data_root, out, f"--max_iters={finish}", "--init_from=resume")
    try:
        outputs = [n.communicate(timeout=280)[0] for n in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                kill_tree(node.pid)
    assert all(n.returncode == 0 for n in nodes), "\n".join(o[-3000:] for o in outputs)
    resumed = checkpoint.load(out / "last.pt")
    assert resumed["iter_num"] == finish and len(resumed["rng"]) == 2

    single = run(data_root, tmp_path / "single", *COMMON, f"--max_iters={finish}")
    assert_same_parameters(single["model"], resumed["model"], atol=1e-5)
