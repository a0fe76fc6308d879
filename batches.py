"""batches.py: training and evaluation batches read from the token bins prepare.py wrote."""

import json

import numpy as np
import torch

import configurator
import metrics


class Batches:
    """Random windows of the token bins. The order comes from a seeded generator that every rank
    advances identically; each rank takes its own share of every step's windows."""

    def __init__(self, folder, block_size, batch_size, seed):
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            raise SystemExit(f"error: {meta_path} not found: run "
                             f"`{configurator.prepare_command(folder)}` first")
        self.meta = json.loads(meta_path.read_text())
        self.data = {}
        for split in ("train", "val"):
            data = np.memmap(folder / f"{split}.bin", dtype=self.meta["dtype"], mode="r")
            if len(data) <= block_size + 1:
                raise SystemExit(f"error: {folder}/{split}.bin has {len(data)} tokens, fewer than "
                                 f"block_size+2={block_size + 2}: lower block_size or prepare more data")
            self.data[split] = data
        self.block_size, self.batch_size = block_size, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def windows(self, split, n, generator):
        return torch.randint(len(self.data[split]) - self.block_size - 1, (n,), generator=generator)

    def get(self, split, starts, device):
        data = self.data[split]
        x = torch.stack([torch.from_numpy(data[i:i + self.block_size].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.block_size].astype(np.int64))
                         for i in starts])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def unigram_loss(self):
        """Cross-entropy (nats) on val of a unigram model of train (add-one smoothing): the loss a
        model that ignores context would reach."""
        return float(np.mean(metrics.unigram_nll(self.data["train"], self.data["val"],
                                                 self.meta["vocab_size"])))
