"""Fine-tuning (init_from=PATH.pt) and the loss mask: the run starts from the checkpoint's weights
with a fresh optimizer, and only the targets the mask marks count, each step's loss the mean over all
of them whichever way the step is split into micro-batches or ranks."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train
from test_train import ON_CPU, args, assert_same_parameters, run, run_ddp
from core import configurator
from training.batches import IGNORE, Batches


@pytest.fixture(scope="module")
def masked_root(data_root, tmp_path_factory):
    """The tiny dataset with a loss mask: runs of 0s and 1s of random lengths, so windows hold
    different numbers of targets and a window's edge falls inside a run."""
    root = tmp_path_factory.mktemp("masked")
    shutil.copytree(data_root / "tiny", root / "tiny")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        n = len(np.memmap(root / "tiny" / f"{split}.bin", dtype=np.uint16, mode="r"))
        runs = rng.integers(1, 40, n)
        mask = np.repeat(np.arange(len(runs)) % 2, runs)[:n].astype(np.uint8)
        mask.tofile(root / "tiny" / f"{split}.mask.bin")
    return root


def set_up(root, out_dir, *extra):
    cfg = configurator.parse(train.SPEC, args(root, out_dir, "--dropout=0.0",
                                              "--keep_freed_memory=False", *extra))
    return train.set_up(cfg, False, 0, 1, torch.device("cpu"))


def test_the_mask_is_exact_at_every_window_boundary(masked_root):
    folder = masked_root / "tiny"
    batches = Batches(folder, 16, 4, 0)
    data = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    mask = np.fromfile(folder / "train.mask.bin", dtype=np.uint8)
    last = len(data) - 16 - 1
    for starts in ([0, 1, 2, 3], [15, 16, 17, last], list(range(100, 140, 10))):
        _, y = batches.get("train", torch.tensor(starts), torch.device("cpu"))
        for row, start in zip(y.tolist(), starts):
            expected = [int(data[i]) if mask[i] else IGNORE for i in range(start + 1, start + 17)]
            assert row == expected
        assert batches.targets("train", starts) == sum(int(mask[s + 1:s + 17].sum()) for s in starts)
    # the unigram baseline counts and scores the learned tokens only
    val = np.fromfile(folder / "val.bin", dtype=np.uint16)[np.fromfile(folder / "val.mask.bin", dtype=np.uint8) == 1]
    counts = np.bincount(data[mask == 1], minlength=batches.meta["vocab_size"]) + 1.0
    assert batches.unigram_loss() == pytest.approx(float(np.mean(-np.log(counts / counts.sum())[val])))
    (folder.parent / "short").mkdir()
    for name in ("train.bin", "val.bin", "meta.json", "tokenizer.json"):
        shutil.copy(folder / name, folder.parent / "short" / name)
    mask[:-1].tofile(folder.parent / "short" / "train.mask.bin")
    with pytest.raises(configurator.ConfigError, match="train.mask.bin has .* prepare the folder again"):
        Batches(folder.parent / "short", 16, 4, 0)


@pytest.mark.parametrize("accumulation", [2, 4, 8])
def test_a_masked_step_is_the_mean_over_its_targets_however_it_is_split(masked_root, tmp_path,
                                                                       accumulation):
    """One step of 8 windows as 8 x 1, 4 x 2 or 2 x 4 micro-batches gives the gradient of the mean
    loss over all 8 windows' targets (a mean of the micro-batches' means would not: they hold
    different numbers of targets)."""
    whole, _ = set_up(masked_root, tmp_path / "whole", "--batch_size=8", "--gradient_accumulation_steps=1")
    split, _ = set_up(masked_root, tmp_path / "split", f"--batch_size={8 // accumulation}",
                      f"--gradient_accumulation_steps={accumulation}")
    starts = whole.batches.train_windows(8)
    assert torch.equal(starts, split.batches.train_windows(8))
    split.batches.drawn = whole.batches.drawn = 0  # both steps draw these windows again
    counts = [split.batches.targets("train", starts[i:i + 8 // accumulation])
              for i in range(0, 8, 8 // accumulation)]
    assert len(set(counts)) > 1, "the windows must hold different numbers of targets"
    x, y = whole.batches.get("train", starts, whole.device)  # the reference: one forward, all targets
    reference = F.cross_entropy(whole.raw_model(x)[0].flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    loss_whole, _, _ = train.train_step(whole)
    loss_split, _, _ = train.train_step(split)
    assert loss_whole == pytest.approx(reference.item(), rel=1e-6)
    assert loss_split == pytest.approx(reference.item(), rel=1e-5)
    assert_same_parameters(whole.raw_model.state_dict(), split.raw_model.state_dict(), atol=1e-6)


def test_ddp_with_a_loss_mask_equals_one_process_accumulating(masked_root, tmp_path):
    """torchrun, 2 ranks (gloo), one micro-batch each == one process accumulating 2: each rank
    weighs its loss by its share of the whole step's targets."""
    common = ["--max_iters=3", "--lr_decay_iters=3", "--eval_interval=100", "--dropout=0.0",
              "--gradient_accumulation_steps=2", ON_CPU]
    single = run(masked_root, tmp_path / "single", *common)
    ddp = run_ddp(masked_root, tmp_path / "ddp", *common)
    assert len(ddp["rng"]) == 2 and ddp["iter_num"] == 3
    assert_same_parameters(single["model"], ddp["model"], atol=1e-5)


def test_fine_tuning_starts_from_the_checkpoint_with_a_fresh_optimizer(data_root, masked_root,
                                                                      tmp_path, capsys):
    pretrained = run(data_root, tmp_path / "pre", "--max_iters=4", "--lr_decay_iters=4")
    source = tmp_path / "pre" / "last.pt"
    # model keys a fine-tune config sets are the checkpoint's, except those it may change
    tuned, state = set_up(masked_root, tmp_path / "ft", f"--init_from={source}", "--n_layer=3",
                          "--block_size=16", "--dropout=0.2")
    assert state.iter_num == 0 and state.history == [] and state.best_val_loss == float("inf")
    assert all(not optimizer.state for optimizer in tuned.optimizers)
    assert_same_parameters(tuned.raw_model.state_dict(), pretrained["model"])
    assert tuned.cfg["n_layer"] == pretrained["model_args"]["n_layer"] == tuned.raw_model.config.n_layer
    assert tuned.cfg["block_size"] == pretrained["model_args"]["block_size"]
    assert tuned.raw_model.config.dropout == 0.2
    assert f"fine-tuning {source}" in capsys.readouterr().out
    # trained, then resumed as any run
    first = run(masked_root, tmp_path / "ft2", f"--init_from={source}", "--max_iters=3",
                "--lr_decay_iters=6", "--eval_interval=3")
    assert first["iter_num"] == 3 and first["config"]["init_from"] == str(source)
    resumed = run(masked_root, tmp_path / "ft2", "--init_from=resume", "--max_iters=6",
                  "--lr_decay_iters=6", "--eval_interval=3")
    assert resumed["iter_num"] == 6
    straight = run(masked_root, tmp_path / "ft3", f"--init_from={source}", "--max_iters=6",
                   "--lr_decay_iters=6", "--eval_interval=3")
    assert_same_parameters(straight["model"], resumed["model"])


def test_fine_tuning_refuses_data_of_another_tokenizer(data_root, tmp_path, capsys):
    run(data_root, tmp_path / "pre", "--max_iters=1", "--lr_decay_iters=1")
    other = tmp_path / "other"
    shutil.copytree(data_root / "tiny", other / "tiny")
    tokenizer = json.loads((other / "tiny" / "tokenizer.json").read_text())
    tokenizer["pattern"] = r"\S+|\s+"  # the same tokens, split another way: another tokenizer
    (other / "tiny" / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(SystemExit) as exit_info:
        train.main(args(other, tmp_path / "ft", f"--init_from={tmp_path / 'pre' / 'last.pt'}"))
    assert exit_info.value.code == 2
    assert "was tokenized with another tokenizer than" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(args(data_root, tmp_path / "ft", "--init_from=pretrained"))
    assert "must be 'scratch', 'resume' or a checkpoint file" in capsys.readouterr().err
