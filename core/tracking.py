"""Experiment tracking: one MLflow or Weights & Biases run per training run, which train.py's
resumptions continue and eval.py adds its figures to (train.py logs through loggers.py).

Both packages are optional (requirements-extra.txt). A run's identity is saved in its checkpoints
(under "tracking"), so `--init_from=resume` reopens the same run and eval.py finds it.
MLflow: the tracking URI is train.py's mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else MLflow's
own default (a local store); a server URI is checked before training starts, so an unreachable one
stops the run before its first step (a server lost later costs a warning: loggers.py).
W&B: `WANDB_MODE=offline` writes the run under out_dir/wandb without a network (`wandb sync`
uploads it later).
"""

import importlib
import json
import os
import re
import time
import urllib.error
import urllib.request

from core import configurator


def import_optional(name):
    """The package `name`, or a ConfigError that says how to install it or turn its logging off."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise configurator.ConfigError(
            f"{name} is not installed: pip install -r requirements-extra.txt (or pip install {name}), "
            f"or turn its logging off (train.py: {name}_log=False; eval.py: --track=False)") from None


def metric_name(key):
    """key with what MLflow refuses in a metric name (anything but letters, digits, _ - . / and
    spaces) replaced by '_'."""
    return re.sub(r"[^\w\-./ ]", "_", key)


# MLflow's client settings (environment variables) unless the user set them
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def check_server(uri, timeout=10):
    """Raise a ConfigError naming uri unless the MLflow server there answers its /health check
    (other URIs, such as a local folder or database, need no server)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise configurator.ConfigError(
            f"the MLflow tracking server {uri} is not reachable ({reason}); start one (mlflow server "
            "--host 127.0.0.1 --port 5000) or point mlflow_tracking_uri / MLFLOW_TRACKING_URI at one "
            "that runs, or turn tracking off (train.py: mlflow_log=False; eval.py: --track=False)"
        ) from None


class MlflowRun:
    """An MLflow run through MlflowClient: new in `experiment`, or the run `run_id` reopened."""

    def __init__(self, uri, experiment, run_id=None, run_name=None):
        mlflow = import_optional("mlflow")
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "") or mlflow.get_tracking_uri()
        check_server(uri)
        # MLflow retries a failed request 7 times with growing pauses (minutes in all) by default:
        # a server lost mid-run would stall training at one step that long; unless set, 2 retries
        for name, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.uri, self.client = uri, mlflow.MlflowClient(uri)
        self.entities = mlflow.entities
        if run_id:
            try:
                self.client.get_run(run_id)
            except mlflow.exceptions.MlflowException:
                raise configurator.ConfigError(
                    f"the MLflow run {run_id} recorded in the checkpoint is not on {uri}: point "
                    "mlflow_tracking_uri / MLFLOW_TRACKING_URI at the server that holds it (eval.py: "
                    "--track=False leaves it alone)") from None
            self.run_id = run_id
        else:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def reopen(self):
        """Mark a resumed run as running again."""
        self.client.update_run(self.run_id, status="RUNNING")

    def log_params(self, params):
        """Parameters not logged to this run yet (MLflow refuses to change one; a resumed run's
        changed settings are in its log and checkpoint)."""
        logged = self.client.get_run(self.run_id).data.params
        new = [self.entities.Param(k, str(v)) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def log_metrics(self, values, step):
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            self.entities.Metric(metric_name(k), float(v), now, step) for k, v in values.items()])

    def log_file(self, path):
        self.client.log_artifact(self.run_id, str(path))

    def set_tags(self, tags):
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def end(self, status):
        """status: 'FINISHED', 'FAILED' or 'KILLED' (stopped, to be resumed)."""
        self.client.set_terminated(self.run_id, status)


def wandb_run(project, out_dir, config=None, run_id=None):
    """A W&B run in project, its files under out_dir/wandb: new, or run_id continued."""
    wandb = import_optional("wandb")
    return wandb.init(project=project, dir=str(out_dir), config=config, id=run_id,
                      resume="allow" if run_id else None)


def flat_figures(tree, prefix=""):
    """{"a/b/c": number} for every number in a nested dict (bools and text left out)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flat_figures(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def log_evaluation(tracked, figures, step, files):
    """eval.py's figures ({"eval/...": number}) and files added to the training run(s) a checkpoint
    recorded (`tracked`: its "tracking" entry): MLflow metrics at the checkpoint's step and the files
    as artifacts, W&B the figures in the run's summary. Returns the names of the runs written to."""
    written = []
    if "mlflow" in tracked:
        run = MlflowRun(tracked["mlflow"]["tracking_uri"], None, tracked["mlflow"]["run_id"])
        run.log_metrics(figures, step)
        for path in files:
            run.log_file(path)
        written.append(f"MLflow run {run.run_id} on {run.uri}")
    if "wandb" in tracked:
        entry = tracked["wandb"]
        run = wandb_run(entry["project"], entry["dir"], run_id=entry["run_id"])
        run.summary.update(figures)
        run.finish()
        written.append(f"W&B run {entry['run_id']} ({entry['project']})")
    return written


def config_params(cfg):
    """A training config as MLflow parameters: every key, values as JSON text."""
    return {k: json.dumps(v, default=str) if not isinstance(v, str) else v for k, v in cfg.items()}
