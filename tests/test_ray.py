"""prepare.py on a local Ray cluster started on 127.0.0.1: the same bytes as the one-machine run,
with one worker killed mid-run (its batch is redone)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation import cluster, curate
import prepare
from conftest import free_port
from test_prepare import config, make_corpus

ray = pytest.importorskip("ray")
RAY = str(Path(sys.executable).with_name("ray"))


def start_head(env, log_dir, attempts=3):
    """(process, port) of `ray start --head --block` on a free port, retried on a fresh port if
    another process takes it first. --block keeps the command running as the owner of the
    cluster's processes: terminating it stops them, and only them (`ray stop` would stop every
    Ray process on the machine, a user's own cluster included)."""
    for _ in range(attempts):
        port = free_port()
        log = log_dir / f"ray-head-{port}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                     f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                     "--disable-usage-stats"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if "Ray runtime started" in log.read_text():
                return proc, port
            time.sleep(0.5)
        stop_head(proc)
    raise AssertionError(f"ray start --head failed {attempts} times; last output:\n"
                         f"{log.read_text()[-3000:]}")


def stop_head(proc):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node cluster on 127.0.0.1 (2 CPUs). The driver's RAY_AUTH_MODE, which
    cluster.connect may set, is restored afterwards."""
    marker = tmp_path_factory.mktemp("fault") / "killed"
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    # RAY_AUTH_MODE=disabled: a cluster on 127.0.0.1 for one test, whatever ~/.ray holds
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    proc, port = start_head(env, tmp_path_factory.mktemp("ray_head"))
    try:
        yield f"127.0.0.1:{port}", marker
    finally:
        ray.shutdown()
        stop_head(proc)
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode


def output_files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "timings.json"}


def killing_its_worker_once(marker):
    """A curate task that, the first time any worker runs it, leaves marker and kills its own worker
    process, as a node failure would; every other run is curate.curate_batch (the worker's module,
    which this test does not patch). Being a closure, Ray sends it by value."""
    def task(cfg, items):
        if not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)
        return curate.curate_batch(cfg, items)
    return task


def test_ray_run_is_byte_identical_and_survives_a_killed_worker(ray_cluster, tmp_path, monkeypatch):
    address, marker = ray_cluster
    monkeypatch.setattr(curate, "curate_batch", killing_its_worker_once(str(marker)))
    (tmp_path / "corpus").mkdir()
    corpus = make_corpus(tmp_path / "corpus")
    one_machine = prepare.run(config(corpus, tmp_path / "local", workers=1))
    on_ray = prepare.run(config(corpus, tmp_path / "ray", ray_address=address))
    assert marker.exists(), "no worker was killed: the fault was not injected"
    local, remote = output_files(one_machine), output_files(on_ray)
    assert sorted(local) == sorted(remote)
    for name in local:
        assert local[name] == remote[name], name
    assert ray.cluster_resources().get("CPU") == 2.0


def test_ray_address_without_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(cluster.RayUnavailable, match="pip install ray"):
        cluster.connect("auto")
