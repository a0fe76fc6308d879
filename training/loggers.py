"""loggers.py: where train.py's records go: out_dir/log.jsonl, TensorBoard, W&B, MLflow."""

import json
import sys
import time
from pathlib import Path

from core import tracking


class Loggers:
    """On rank 0 (nothing elsewhere): out_dir/log.jsonl, one JSON record per logged step and per
    evaluation (what benchmarks and notebooks read), TensorBoard, and W&B / MLflow when enabled.
    resumed: the "tracking" entry of the checkpoint a resumed run starts from, so that it continues
    the same W&B and MLflow runs ({} for a new run)."""

    def __init__(self, cfg, enabled, resumed=None):
        self.tb = self.wandb = self.mlflow = self.jsonl = None
        self.tracking = {}  # what checkpoints save to find the tracked runs again
        if not enabled:
            return
        resumed, out_dir = resumed or {}, Path(cfg["out_dir"]).resolve()
        # the tracked runs first: a missing package or an unreachable server stops the run here,
        # before any tracked run is opened (which would otherwise stay "running")
        for package in ("mlflow", "wandb"):
            if cfg[f"{package}_log"]:
                tracking.import_optional(package)
        if cfg["mlflow_log"]:
            run_id = resumed.get("mlflow", {}).get("run_id")
            self.mlflow = tracking.MlflowRun(cfg["mlflow_tracking_uri"], cfg["mlflow_experiment"],
                                             run_id, run_name=out_dir.name)
            if run_id:
                self.mlflow.reopen()
            self.mlflow.log_params(tracking.config_params(cfg))
            self.mlflow.set_tags({"out_dir": out_dir})
            self.tracking["mlflow"] = {"tracking_uri": self.mlflow.uri, "run_id": self.mlflow.run_id}
        if cfg["wandb_log"]:
            run_id = resumed.get("wandb", {}).get("run_id")
            self.wandb = tracking.wandb_run(cfg["wandb_project"], out_dir, cfg, run_id)
            self.tracking["wandb"] = {"project": cfg["wandb_project"], "run_id": self.wandb.id,
                                      "dir": str(out_dir)}
        self.jsonl = open(out_dir / "log.jsonl", "a", encoding="utf-8")
        if cfg["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out_dir / "tb"))

    def scalars(self, values, step):
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(values, step=step)
        if self.mlflow:
            try:
                self.mlflow.log_metrics(values, step)
            except Exception as e:  # the server went away mid-run: training goes on without it
                self.lose_mlflow(f"step {step}", e)

    def record(self, kind, values):
        """Append {"kind": kind, "time": unix seconds, **values} to log.jsonl (a resumed run appends
        after the interrupted one's records)."""
        if self.jsonl:
            self.jsonl.write(json.dumps({"kind": kind, "time": round(time.time(), 3), **values}) + "\n")
            self.jsonl.flush()

    def text(self, tag, text, step):
        if self.tb:
            self.tb.add_text(tag, text, step)

    def lose_mlflow(self, when, error):
        """Stop logging to MLflow after a failure mid-run (its server stopped or became
        unreachable), with one warning: training is worth more than its tracking, log.jsonl keeps
        every record, and the checkpoints keep the run's id for a resumption to continue it."""
        print(f"warning: MLflow logging to {self.mlflow.uri} failed at {when} "
              f"({type(error).__name__}: {str(error)[:300]}); training goes on without it, and "
              f"{self.jsonl.name} keeps every record", file=sys.stderr, flush=True)
        self.mlflow = None

    def close(self, status="FINISHED"):
        """status: 'FINISHED', 'KILLED' (stopped by a signal, to be resumed) or 'FAILED'. The
        MLflow run gets log.jsonl as an artifact, and a tag with each checkpoint's path."""
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.mlflow:
            out_dir = Path(self.jsonl.name).parent
            try:
                self.mlflow.set_tags({f"checkpoint.{p.stem}": p for p in sorted(out_dir.glob("*.pt"))})
                self.mlflow.log_file(self.jsonl.name)
                self.mlflow.end(status)
            except Exception as e:
                self.lose_mlflow("the end of the run", e)
        if self.wandb:
            self.wandb.finish(exit_code=1 if status == "FAILED" else 0)
