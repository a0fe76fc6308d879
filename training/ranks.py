"""ranks.py: what training on several ranks (torchrun, DDP) needs besides DDP itself: sharing
the accumulation micro-steps between ranks, agreeing on a branch, and stopping on a signal at a
step boundary, where every rank can save together."""

import signal
import sys

import torch
import torch.distributed as dist

from core import configurator


def micro_steps_per_rank(accumulation, world, batch_size):
    """Each rank's share of the accumulation micro-steps, or an error naming what would work."""
    if accumulation % world == 0:
        return accumulation // world
    ranks = [n for n in range(1, accumulation + 1) if accumulation % n == 0]
    sequences = accumulation * batch_size
    same = [(a, sequences // a) for a in range(world, sequences + 1, world) if sequences % a == 0]
    other = (f"keep the same {sequences} sequences per step on {world} ranks with "
             f"--gradient_accumulation_steps={same[0][0]} --batch_size={same[0][1]}" if same else
             f"set gradient_accumulation_steps to a multiple of {world} (no split keeps "
             f"{sequences} sequences per step on {world} ranks)")
    raise configurator.ConfigError(
        f"gradient_accumulation_steps={accumulation} cannot be shared by {world} ranks: run on "
        f"{', '.join(map(str, ranks))} ranks, or {other}")


def agree(ddp, device, *flags):
    """Each flag, True on every rank if it is True on any (under DDP every rank must take the same
    branch, or the next collective hangs)."""
    if not ddp:
        return flags
    tensor = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in tensor.tolist())


class StopRequest:
    """Inside `with StopRequest() as stop:`, SIGTERM/SIGINT set stop.signal, and the loop saves
    last.pt at the end of the step and exits. The handlers found on entry come back on exit: a
    process that goes on after training (bench.py ablate, a notebook, the tests) must die on SIGTERM
    again, and so must the processes it forks later (multiprocessing.Pool.terminate stops its
    workers with SIGTERM; workers that inherited this handler ignored it, and the pool's join
    waited for them forever)."""

    def __enter__(self):
        self.signal = None
        self.previous = {sig: signal.signal(sig, self._handle)
                         for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc_info):
        for sig, handler in self.previous.items():
            # None: a handler installed outside Python, which cannot be put back; use the default
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: saving a checkpoint at the end of this step, then stopping",
              file=sys.stderr, flush=True)
