"""batches.py: training and evaluation batches read from the token bins prepare.py wrote.

A split may have a loss mask beside its tokens: `{split}.mask.bin`, one uint8 per token, 1 where
the token is one to learn (a supervised pair's response) and 0 where it is only context (the
prompt). A window's targets are the tokens after its inputs, so its mask is read at the same
offsets as the targets, and a target the mask excludes becomes IGNORE, which the loss skips."""

import json

import numpy as np
import torch

from core import configurator
from core import metrics


ORDERS = ("random", "epoch")
IGNORE = -100  # the loss's ignore_index (model.GPT.forward)


class Batches:
    """Windows of block_size tokens from the token bins. Training windows come in one of two orders:
    "random" starts anywhere, drawn with replacement by a seeded generator; "epoch" cuts train.bin
    into non-overlapping windows and takes each once per epoch, in an order shuffled by seed and
    epoch number. Every rank draws the same windows and takes its own share of each step's."""

    def __init__(self, folder, block_size, batch_size, seed, order="random"):
        if order not in ORDERS:
            raise configurator.ConfigError(f"batch_order={order!r} must be one of {ORDERS}")
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            raise configurator.ConfigError(f"{meta_path} not found: run "
                                           f"`{configurator.prepare_command(folder)}` first")
        self.meta = json.loads(meta_path.read_text())
        self.data = {}
        for split in ("train", "val"):
            data = np.memmap(folder / f"{split}.bin", dtype=self.meta["dtype"], mode="r")
            if len(data) <= block_size + 1:
                raise configurator.ConfigError(
                    f"{folder}/{split}.bin has {len(data)} tokens, fewer than block_size+2="
                    f"{block_size + 2}: lower block_size or prepare more data")
            self.data[split] = data
        self.masks = {}
        for split in ("train", "val"):
            path = folder / f"{split}.mask.bin"
            if path.exists():
                self.masks[split] = np.memmap(path, dtype=np.uint8, mode="r")
                if len(self.masks[split]) != len(self.data[split]):
                    raise configurator.ConfigError(
                        f"{path} has {len(self.masks[split])} entries for {len(self.data[split])} "
                        f"tokens in {split}.bin: prepare the folder again")
        self.block_size, self.batch_size, self.seed, self.order = block_size, batch_size, seed, order
        self.generator = torch.Generator().manual_seed(seed)  # "random": its state is the position
        self.drawn = 0  # "epoch": training windows taken so far, the position a checkpoint keeps
        self._shuffled = (-1, None)  # (epoch, its order of windows), computed once per epoch

    def windows(self, split, n, generator):
        """Starts of n random windows of split (with replacement)."""
        return torch.randint(len(self.data[split]) - self.block_size - 1, (n,), generator=generator)

    def train_windows(self, n):
        """Starts of the next n training windows, in batch_order."""
        if self.order == "random":
            return self.windows("train", n, self.generator)
        count = (len(self.data["train"]) - 1) // self.block_size  # a window needs its next token
        starts = []
        while len(starts) < n:
            epoch, index = divmod(self.drawn, count)
            if self._shuffled[0] != epoch:
                order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed + epoch))
                self._shuffled = (epoch, order)
            take = min(n - len(starts), count - index)
            starts += (self._shuffled[1][index:index + take] * self.block_size).tolist()
            self.drawn += take
        return torch.tensor(starts)

    def get(self, split, starts, device):
        data = self.data[split]
        x = torch.stack([torch.from_numpy(data[i:i + self.block_size].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.block_size].astype(np.int64))
                         for i in starts])
        if split in self.masks:
            mask = self.masks[split]
            learn = torch.stack([torch.from_numpy(mask[i + 1:i + 1 + self.block_size].astype(bool))
                                 for i in starts])
            y = y.masked_fill(~learn, IGNORE)
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def targets(self, split, starts):
        """How many targets of the windows at starts the loss counts (all, without a mask)."""
        if split not in self.masks:
            return len(starts) * self.block_size
        mask = self.masks[split]
        return int(sum(int(mask[i + 1:i + 1 + self.block_size].sum()) for i in starts))

    def learned(self, split):
        """The tokens of split the loss counts: those its mask marks, or all of them."""
        data = self.data[split]
        return data[self.masks[split] == 1] if split in self.masks else data

    def unigram_loss(self):
        """Cross-entropy (nats) on val of a unigram model of train (add-one smoothing), both on the
        tokens the loss counts: the loss a model that ignores context would reach."""
        return float(np.mean(metrics.unigram_nll(self.learned("train"), self.learned("val"),
                                                 self.meta["vocab_size"])))
