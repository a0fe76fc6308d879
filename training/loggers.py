"""loggers.py: where train.py's records go: out_dir/log.jsonl, TensorBoard, W&B, MLflow."""

import json
import time
from pathlib import Path

from training import configurator


class Loggers:
    """On rank 0 (nothing elsewhere): out_dir/log.jsonl, one JSON record per logged step and per
    evaluation (what benchmarks and notebooks read), TensorBoard, and W&B / MLflow when enabled."""

    def __init__(self, cfg, enabled):
        self.tb = self.wandb = self.mlflow = self.jsonl = None
        if not enabled:
            return
        self.jsonl = open(Path(cfg["out_dir"]) / "log.jsonl", "a", encoding="utf-8")
        if cfg["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(cfg["out_dir"]) / "tb"))
        try:
            if cfg["wandb_log"]:
                import wandb
                self.wandb = wandb
                wandb.init(project=cfg["wandb_project"], config=cfg)
            if cfg["mlflow_log"]:
                import mlflow
                self.mlflow = mlflow
                mlflow.start_run()
                mlflow.log_params({k: str(v)[:250] for k, v in cfg.items()})
        except ImportError as e:
            raise configurator.ConfigError(f"{e.name} is not installed: pip install {e.name}, "
                                           f"or turn {e.name}_log off") from None

    def scalars(self, values, step):
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(values, step=step)
        if self.mlflow:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def record(self, kind, values):
        """Append {"kind": kind, "time": unix seconds, **values} to log.jsonl (a resumed run appends
        after the interrupted one's records)."""
        if self.jsonl:
            self.jsonl.write(json.dumps({"kind": kind, "time": round(time.time(), 3), **values}) + "\n")
            self.jsonl.flush()

    def text(self, tag, text, step):
        if self.tb:
            self.tb.add_text(tag, text, step)

    def close(self):
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        if self.mlflow:
            self.mlflow.end_run()
