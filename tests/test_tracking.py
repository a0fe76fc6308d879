"""Experiment tracking against the real packages: train.py and eval.py logging to an actual
`mlflow server` on 127.0.0.1 (SQLite store, local artifacts), started and stopped here, and to
Weights & Biases offline; each read back (MlflowClient; the offline run's own records) and compared
with train.py's log.jsonl and eval.py's eval.json."""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import eval as evaluate_script
import train
from conftest import free_port
from test_train import ON_CPU, ROOT, args, log_records, run
from core import checkpoint, tracking

EVAL = ["--gen_documents=4", "--prompt_tokens=16", "--reference_tokens=8", "--tensorboard=False"]
STEP_METRICS = {"loss/train_step": "loss", "lr": "lr", "grad_norm": "grad_norm",
                "tokens_per_s": "tokens_per_s"}
EVAL_METRICS = {"loss/val": "val_loss", "perplexity/val": "val_ppl"}


@pytest.fixture(autouse=True)
def mlflow_client_settings(monkeypatch):
    """tracking.MLFLOW_HTTP_DEFAULTS set through monkeypatch, so that the environment MlflowRun would
    fill in is this test's alone and restored after it."""
    for name, value in tracking.MLFLOW_HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)


def needs(package):
    return pytest.importorskip(package, reason=f"{package} is not installed (requirements-extra.txt)")


def start_mlflow_server(folder, tries=3):
    """(process, url) of `mlflow server` on a free port, in its own process group, tried on up to
    `tries` fresh ports (another process may take a port between free_port() and the server's
    bind); None and the last log's end if none answered /health."""
    for _ in range(tries):
        proc, url = start_mlflow_server_once(folder, free_port())
        if proc:
            return proc, url
    return None, url


def start_mlflow_server_once(folder, port):
    """(process, url) of `mlflow server` on port; None, log text if it did not answer /health or
    said the port is taken (it then lingers for seconds before it exits)."""
    log_file = folder / f"server-{port}.log"
    log = open(log_file, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.time() + 120
    while proc.poll() is None and time.time() < deadline and "address already in use" not in log_file.read_text():
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.5)
    stop_process_group(proc)
    return None, log_file.read_text()[-3000:]


def stop_process_group(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The URL of a real MLflow tracking server (tried on up to 3 fresh ports)."""
    needs("mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    proc, url = start_mlflow_server(folder)
    assert proc, f"mlflow server did not start:\n{url}"
    yield url
    stop_process_group(proc)


def logged_series(out_dir):
    """{metric: sorted [(step, value)]} that train.py's log.jsonl says it logged."""
    steps, evals = log_records(out_dir, "step"), log_records(out_dir, "eval")
    series = {m: sorted((r["iter"], r[k]) for r in steps) for m, k in STEP_METRICS.items()}
    series.update({m: sorted((r["iter"], r[k]) for r in evals) for m, k in EVAL_METRICS.items()})
    return series


def mlflow_series(client, run_id, names):
    return {m: sorted((x.step, x.value) for x in client.get_metric_history(run_id, m)) for m in names}


def assert_series_equal(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        assert [s for s, _ in got[name]] == [s for s, _ in expected[name]], name
        assert [v for _, v in got[name]] == pytest.approx([v for _, v in expected[name]],
                                                          rel=1e-6), name


def test_mlflow_run_holds_training_its_resumption_and_evaluation(data_root, tmp_path, mlflow_server,
                                                                 monkeypatch):
    mlflow = needs("mlflow")
    out, tracked = tmp_path / "o", ["--mlflow_log=True", "--mlflow_experiment=resumed", "--log_interval=1",
                                    "--eval_interval=3"]
    # a new run, the server named by MLFLOW_TRACKING_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    first = run(data_root, out, "--max_iters=6", *tracked)
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("resumed")
    (only,) = client.search_runs([experiment.experiment_id])
    run_id = first["tracking"]["mlflow"]["run_id"]
    assert only.info.run_id == run_id and only.info.status == "FINISHED"
    assert only.data.params == tracking.config_params(first["config"])  # the whole config
    assert set(only.data.params) == set(first["config"]) and only.data.params["n_layer"] == "2"
    assert_series_equal(mlflow_series(client, run_id, [*STEP_METRICS, *EVAL_METRICS]),
                        logged_series(out))
    assert [a.path for a in client.list_artifacts(run_id)] == ["log.jsonl"]
    assert only.data.tags["checkpoint.last"] == str((out / "last.pt").resolve())

    # resumed, the server named by the key instead: the same run goes on, steps 7 to 9
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    second = run(data_root, out, "--max_iters=9", "--init_from=resume",
                 f"--mlflow_tracking_uri={mlflow_server}", *tracked)
    assert second["tracking"] == first["tracking"]
    (only,) = client.search_runs([experiment.experiment_id])
    assert only.info.run_id == run_id and only.info.status == "FINISHED"
    series = mlflow_series(client, run_id, [*STEP_METRICS, *EVAL_METRICS])
    assert [s for s, _ in series["lr"]] == list(range(1, 10))
    assert_series_equal(series, logged_series(out))

    # eval.py adds its figures and files to the same run, at the checkpoint's step
    result = evaluate_script.main([f"--ckpt={out / 'last.pt'}", f"--out_dir={tmp_path / 'eval'}",
                                   *EVAL])
    metrics = client.get_run(run_id).data.metrics
    overall = result["likelihood"]["overall"]
    assert metrics["eval/likelihood/overall/perplexity"] == pytest.approx(overall["perplexity"])
    assert metrics["eval/likelihood/overall/bits_per_byte"] == pytest.approx(overall["bits_per_byte"])
    for name, baseline in result["baselines"].items():
        assert metrics[f"eval/baselines/{name}/bits_per_byte"] == pytest.approx(
            baseline["bits_per_byte"])
    for key in ("bleu", "chrf", "rougeL"):
        assert metrics[f"eval/generation/{key}"] == pytest.approx(result["generation"][key])
    assert {x.step for x in client.get_metric_history(run_id, "eval/generation/bleu")} == {9}
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["eval.json", "log.jsonl",
                                                                     "report.md"]
    assert client.get_run(run_id).info.status == "FINISHED"  # eval.py leaves the status alone


def test_an_unreachable_mlflow_server_stops_the_run_before_training(data_root, tmp_path, capsys):
    needs("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.time()
    with pytest.raises(SystemExit) as stopped:
        train.main(args(data_root, tmp_path, "--mlflow_log=True", f"--mlflow_tracking_uri={uri}"))
    assert stopped.value.code == 2 and time.time() - started < 60
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and uri in errors[0] and "not reachable" in errors[0]
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "log.jsonl").exists()


def test_eval_names_an_unreachable_server_of_a_tracked_checkpoint(ckpt, tmp_path, capsys):
    needs("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"
    tracked = {**checkpoint.load(ckpt), "tracking": {"mlflow": {"tracking_uri": uri, "run_id": "r"}}}
    checkpoint.save(tracked, tmp_path / "tracked.pt")
    with pytest.raises(SystemExit) as stopped:
        evaluate_script.main([f"--ckpt={tmp_path / 'tracked.pt'}", f"--out_dir={tmp_path / 'e'}", *EVAL])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert stopped.value.code == 2 and len(errors) == 1 and uri in errors[0], errors
    assert "--track=False" in errors[0] and (tmp_path / "e" / "eval.json").exists()
    result = evaluate_script.main([f"--ckpt={tmp_path / 'tracked.pt'}", f"--out_dir={tmp_path / 'f'}",
                                   "--track=False", *EVAL])  # the same checkpoint, runs left alone
    assert result["likelihood"]["overall"]["tokens"] > 0


def test_a_taken_port_is_retried_on_a_fresh_one(tmp_path, monkeypatch):
    """The first port offered is held by another listener: the server is started again on the next."""
    needs("mlflow")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = [taken.getsockname()[1], free_port()]
        offered = []
        monkeypatch.setattr(sys.modules[__name__], "free_port", lambda: offered.append(ports[len(offered)]) or offered[-1])
        proc, url = start_mlflow_server(tmp_path, tries=2)
    try:
        assert proc, url
        assert offered == ports and url == f"http://127.0.0.1:{ports[1]}"
        with urllib.request.urlopen(url + "/health", timeout=5) as answer:
            assert answer.status == 200
    finally:
        if proc:
            stop_process_group(proc)


def test_a_server_lost_mid_run_stops_the_logging_not_the_training(data_root, tmp_path):
    """The MLflow server stops while train.py runs: one warning, training goes on (log.jsonl keeps
    every step), and a SIGTERM still ends the run cleanly with last.pt written."""
    needs("mlflow")
    proc, url = start_mlflow_server(tmp_path)
    assert proc, url
    out, errors = tmp_path / "o", open(tmp_path / "train.err", "w+")
    trainer = subprocess.Popen(
        [sys.executable, "train.py", *args(data_root, out, "--max_iters=100000", "--log_interval=1",
                                           "--eval_interval=100000", "--mlflow_log=True",
                                           f"--mlflow_tracking_uri={url}")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors, env={**os.environ})
    try:
        deadline = time.time() + 120
        while not (out / "log.jsonl").exists() or not log_records(out, "step"):  # logging to MLflow
            assert time.time() < deadline and trainer.poll() is None
            time.sleep(0.2)
        stop_process_group(proc)  # the server goes away mid-run
        lost_at = len(log_records(out, "step"))
        while "MLflow logging" not in (tmp_path / "train.err").read_text():
            assert time.time() < deadline and trainer.poll() is None, (tmp_path / "train.err").read_text()
            time.sleep(0.2)
        while len(log_records(out, "step")) < lost_at + 20:  # training went on
            assert time.time() < deadline and trainer.poll() is None
            time.sleep(0.2)
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(timeout=120) == 0
    finally:
        if trainer.poll() is None:
            trainer.kill()
        stop_process_group(proc)
    warnings = [line for line in (tmp_path / "train.err").read_text().splitlines()
                if line.startswith("warning: MLflow logging")]
    assert len(warnings) == 1 and url in warnings[0] and "log.jsonl keeps every record" in warnings[0]
    assert checkpoint.load(out / "last.pt")["iter_num"] == log_records(out, "step")[-1]["iter"]


def test_under_ddp_only_rank_0_logs_to_mlflow(data_root, tmp_path, mlflow_server):
    mlflow = needs("mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", *args(data_root, tmp_path, ON_CPU, "--max_iters=4", "--log_interval=1",
                             "--gradient_accumulation_steps=2", "--batch_size=2",
                             "--mlflow_log=True", "--mlflow_experiment=ddp")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    client = mlflow.MlflowClient(mlflow_server)
    (only,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert [x.step for x in client.get_metric_history(only.info.run_id, "lr")] == [1, 2, 3, 4]


# ------------------------------------------------------------------------- Weights & Biases offline

def wandb_records(path):
    """The Records of an offline W&B run file: after a 7-byte header (":W&B", a magic number, a
    version), LevelDB's log format: 32 KiB blocks of chunks, each with a 7-byte header (CRC-32C,
    length, type: 1 whole record, 2 first part, 3 middle, 4 last); a block's tail too short for a
    header is padding."""
    from wandb.proto import wandb_internal_pb2
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending, found = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
        elif kind == 0:
            break  # the unwritten rest of a preallocated block
    return found


def offline_runs(out_dir):
    """[(run id, [Record])] of every offline run under out_dir/wandb, in the order they were
    written (a folder's name is its start to the second, and a suffix when two share it)."""
    files = sorted((Path(out_dir) / "wandb").glob("offline-run-*/run-*.wandb"),
                   key=lambda f: f.stat().st_mtime)
    found = [wandb_records(f) for f in files]
    return [([r.run.run_id for r in records if r.WhichOneof("record_type") == "run"][0], records)
            for records in found]


def history(found):
    """{metric: sorted [(step, value)]} of the history records."""
    series = {}
    for record in found:
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item}
            for key, value in items.items():
                if not key.startswith("_"):
                    series.setdefault(key, []).append((items["_step"], value))
    return {k: sorted(v) for k, v in series.items()}


def summary(found):
    values = {}
    for record in found:
        if record.WhichOneof("record_type") == "summary":
            values.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                           for i in record.summary.update})
    return values


def test_wandb_offline_run_holds_training_its_resumption_and_evaluation(data_root, tmp_path,
                                                                        monkeypatch):
    needs("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, tracked = tmp_path / "o", ["--wandb_log=True", "--wandb_project=offline-test",
                                    "--log_interval=1", "--eval_interval=3"]
    first = run(data_root, out, "--max_iters=6", *tracked)
    run_id = first["tracking"]["wandb"]["run_id"]
    second = run(data_root, out, "--max_iters=9", "--init_from=resume", *tracked)
    assert second["tracking"] == first["tracking"]
    result = evaluate_script.main([f"--ckpt={out / 'last.pt'}", f"--out_dir={tmp_path / 'eval'}",
                                   *EVAL])
    runs = offline_runs(out)
    assert [found_id for found_id, _ in runs] == [run_id] * 3  # train, resume, eval: one run
    trained = runs[0][1] + runs[1][1]
    (opened, _) = [r.run for r in trained if r.WhichOneof("record_type") == "run"]
    logged = {i.key: json.loads(i.value_json) for i in opened.config.update}
    assert {k: logged[k] for k in first["config"]} == json.loads(json.dumps(first["config"],
                                                                            default=str))
    got = history(trained)
    assert_series_equal({m: got[m] for m in [*STEP_METRICS, *EVAL_METRICS]}, logged_series(out))
    assert [s for s, _ in got["lr"]] == list(range(1, 10))
    figures = summary(runs[2][1])
    overall = result["likelihood"]["overall"]
    assert figures["eval/likelihood/overall/perplexity"] == pytest.approx(overall["perplexity"])
    assert figures["eval/generation/bleu"] == pytest.approx(result["generation"]["bleu"])
    assert checkpoint.load(out / "last.pt")["tracking"]["wandb"]["project"] == "offline-test"
