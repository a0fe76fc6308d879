"""train.py on CPU with a tiny model: exact resume, DDP equivalence, precision, checkpoints, config."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.tokenizer import Tokenizer
from core import checkpoint
from core import configurator
from core import hardware
from training import ranks
import prepare
import train
from test_prepare import config as prepare_config
from test_prepare import make_corpus

ROOT = Path(__file__).resolve().parent.parent


def args(data_root, out_dir, *extra):
    return [str(ROOT / "config" / "tiny.py"), f"--data_root={data_root}", "--dataset=tiny",
            f"--out_dir={out_dir}", "--tensorboard=False", "--sample_interval=0", *extra]


def run(data_root, out_dir, *extra):
    train.main(args(data_root, out_dir, *extra))
    return checkpoint.load(Path(out_dir) / "last.pt")


def log_records(out_dir, kind):
    """The records of one kind ('step' or 'eval') in a run's log.jsonl, in order."""
    lines = (Path(out_dir) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# Two ranks on one machine run on the CPU (gloo) whatever the machine has: two ranks cannot share
# one GPU (hardware.check_ddp refuses it), and the single process they are compared with is pinned
# to the CPU with them, so that both sides round alike.
ON_CPU = "--device=cpu"


def run_ddp(data_root, out_dir, *extra):
    """train.py under torchrun with 2 ranks (gloo) on the CPU; its last.pt."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", *args(data_root, out_dir, ON_CPU, *extra)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[:4000]
    return checkpoint.load(Path(out_dir) / "last.pt")


def assert_same_parameters(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


GPT2 = [str(ROOT / "config" / "gpt2.py")]  # GPT-2's recipe; train.py's defaults are the other one
# every recipe option on, including the two the defaults leave off (untied head, soft-cap)
SPEEDRUN = ["--optimizer=muon", "--lr_schedule=wsd", "--batch_order=epoch", "--position=rotary",
            "--activation=relu2", "--qk_norm=True", "--zero_init=True", "--tied_head=False",
            "--value_embeddings=1", "--logit_softcap=15.0"]


@pytest.mark.parametrize("recipe", [GPT2, SPEEDRUN], ids=["gpt2", "speedrun"])
def test_resume_continues_exactly(data_root, tmp_path, recipe):
    """12 steps straight == 6 steps, stop, resume, 6 more: same weights, optimizer states (Muon's
    momentum too), RNG and data (the epoch order's position too)."""
    straight = run(data_root, tmp_path / "a", "--max_iters=12", "--lr_decay_iters=12",
                   "--eval_interval=4", *recipe)
    run(data_root, tmp_path / "b", "--max_iters=6", "--lr_decay_iters=12", "--eval_interval=4", *recipe)
    resumed = run(data_root, tmp_path / "b", "--max_iters=12", "--lr_decay_iters=12",
                  "--eval_interval=4", "--init_from=resume", *recipe)
    assert straight["iter_num"] == resumed["iter_num"] == 12
    assert_same_parameters(straight["model"], resumed["model"])  # bitwise: dropout is on (0.1)
    assert torch.equal(straight["train_generator"], resumed["train_generator"])
    by_step = {h["iter"]: h["val_loss"] for h in resumed["history"]}  # it also has step 6, the stop
    assert all(by_step[h["iter"]] == h["val_loss"] for h in straight["history"])
    assert straight["train_windows_drawn"] == resumed["train_windows_drawn"]
    assert len(straight["optimizer"]) == (2 if recipe is SPEEDRUN else 1)
    for saved, saved2 in zip(straight["optimizer"], resumed["optimizer"]):
        assert saved["state"].keys() == saved2["state"].keys() and saved["state"]
        for k in saved["state"]:
            for name, value in saved["state"][k].items():  # exp_avg(_sq), Muon's momentum_buffer
                assert torch.equal(value, saved2["state"][k][name]), (k, name)


@pytest.mark.parametrize("recipe", [GPT2, SPEEDRUN], ids=["gpt2", "speedrun"])
def test_ddp_equals_single_process_accumulation(data_root, tmp_path, recipe):
    """torchrun, 2 ranks (gloo), accumulation 2 overall (1 per rank) == one process accumulating 2."""
    common = ["--max_iters=4", "--lr_decay_iters=4", "--eval_interval=100", "--dropout=0.0",
              "--gradient_accumulation_steps=2", ON_CPU, *recipe]
    single = run(data_root, tmp_path / "single", *common)
    ddp = run_ddp(data_root, tmp_path / "ddp", *common)
    assert len(ddp["rng"]) == 2 and ddp["iter_num"] == 4
    assert_same_parameters(single["model"], ddp["model"], atol=1e-5)


def test_gradient_checkpointing_trains_identically(data_root, tmp_path):
    plain = run(data_root, tmp_path / "plain", "--max_iters=4")
    ckpt = run(data_root, tmp_path / "ckpt", "--max_iters=4", "--gradient_checkpointing=True")
    assert_same_parameters(plain["model"], ckpt["model"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mixed_precision_loss_is_finite_and_falls(data_root, tmp_path, dtype):
    ckpt = run(data_root, tmp_path / dtype, f"--dtype={dtype}", "--max_iters=40", "--lr_decay_iters=40",
               "--eval_interval=20")
    losses = [h["val_loss"] for h in ckpt["history"]]
    assert all(map(torch.isfinite, torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.5, losses
    # fp16 needs the gradient scaler (its state is saved for resume); bf16 has fp32's range
    assert ("scale" in ckpt["scaler"]) == (dtype == "float16"), ckpt["scaler"]


def test_training_beats_the_unigram_baseline(data_root, tmp_path):
    ckpt = run(data_root, tmp_path / "learn", "--max_iters=200", "--lr_decay_iters=200", "--batch_size=16",
               "--eval_interval=50", "--dropout=0.0")
    assert ckpt["history"][-1]["val_loss"] < ckpt["unigram_val_loss"] - 0.3, ckpt["history"]


def test_checkpoints_are_self_contained(data_root, tmp_path):
    run(data_root, tmp_path / "o", "--max_iters=20", "--keep_last=2", "--checkpoint_interval=5")
    assert sorted(p.name for p in (tmp_path / "o").glob("ckpt_*.pt")) == \
        ["ckpt_0000015.pt", "ckpt_0000020.pt"]
    model, tokenizer, ckpt = checkpoint.load_model(tmp_path / "o" / "best.pt")
    assert ckpt["config"]["n_embd"] == 32 and ckpt["iter_num"] in (10, 20)
    # the tokenizer travels inside: the data folder's own, id for id
    text = "def step(value):\n    return value * 2  # The river ran past the old mill.\n"
    assert tokenizer.encode(text) == Tokenizer.load(data_root / "tiny" / "tokenizer.json").encode(text)


def test_non_finite_steps_stop_the_run(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(data_root, tmp_path / "nan", "--learning_rate=1e12", "--decay_lr=False",
            "--max_bad_steps=2", "--grad_clip=0.0", "--max_iters=50")
    assert exit_info.value.code == 2
    assert "error: 2 consecutive non-finite steps" in capsys.readouterr().err


def test_corrupt_and_foreign_checkpoints_get_clear_errors(data_root, tmp_path):
    good = run(data_root, tmp_path / "c", "--max_iters=2")
    path = tmp_path / "c" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated, corrupt"):
        checkpoint.load(path)
    with pytest.raises(SystemExit) as exit_info:
        train.main(args(data_root, tmp_path / "c", "--init_from=resume"))
    assert exit_info.value.code == 2
    torch.save({"format_version": 1, "evil": Path("/")}, path)  # needs unpickling a class
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        checkpoint.load(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a format-1 checkpoint"):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere.pt")
    assert good["iter_num"] == 2


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save({"format_version": 1, "step": 0, "big": torch.zeros(1)}, path)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, torch\nfrom core import checkpoint\n"
        "big = torch.randn(64 * 2**20)\n"  # 256 MB: the write takes a while
        "for step in range(1, 1000):\n"
        "    checkpoint.save({'format_version': 1, 'step': step, 'big': big}, sys.argv[1])\n"
    ), str(path)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    tmp = tmp_path / ".last.pt.tmp"
    deadline = time.time() + 60
    while not (tmp.exists() and tmp.stat().st_size > 10 * 2**20) and time.time() < deadline:
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert tmp.exists(), "the writer was not caught mid-write"
    obj = torch.load(path, weights_only=True)  # the previous complete file
    assert obj["format_version"] == 1 and obj["step"] >= 0


def test_training_puts_the_signal_handlers_back(data_root, tmp_path):
    """train.main in a process that goes on (bench.py ablate, a notebook, these tests) leaves SIGTERM and
    SIGINT as it found them. With its handler left behind, the processes forked later inherited it:
    multiprocessing.Pool.terminate's SIGTERM no longer stopped a waiting worker, and the pool's join
    hung the test suite (tokenizer.count_chunks_parallel, in a later test)."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    run(data_root, tmp_path, "--max_iters=2")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_sigterm_saves_then_resume_finishes(data_root, tmp_path):
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, "train.py", *args(data_root, out, "--max_iters=100000",
                                                                "--lr_decay_iters=100000",
                                                                "--eval_interval=1000000",
                                                                "--log_interval=1")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("iter 3:"):
            proc.send_signal(signal.SIGTERM)
            break
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    assert "resume with --init_from=resume" in output
    stopped = checkpoint.load(out / "last.pt")
    assert 3 <= stopped["iter_num"] < 100
    resumed = run(data_root, out, f"--max_iters={stopped['iter_num'] + 2}", "--lr_decay_iters=100000",
                  "--eval_interval=1000000", "--init_from=resume")
    assert resumed["iter_num"] == stopped["iter_num"] + 2


def test_config_errors(data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--batchsize=3"])
    assert exit_info.value.code == 2 and "Did you mean 'batch_size'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train.main(args(data_root, tmp_path, "--gradient_accumulation_steps=0.5"))
    assert "must be int" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train.main(args(data_root, tmp_path, "--dtype=float8"))
    assert "dtype='float8' must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train.main(args(data_root, tmp_path, "--dataset=missing"))
    assert exit_info.value.code == 2
    assert f"run `python prepare.py --dataset=missing --data_root={data_root} " in capsys.readouterr().err


@pytest.mark.parametrize("folder, command", [
    ("data/mini_lm", "python prepare.py config/prepare_mini_lm.py"),
    ("data/demo", "python prepare.py"),
    ("elsewhere/demo", "python prepare.py --data_root=elsewhere"),
    ("data/mine", "python prepare.py --dataset=mine (with your own sources: --help)"),
])
def test_missing_data_hints_name_the_command_that_builds_it(folder, command):
    assert configurator.prepare_command(folder) == command
    assert prepare.SPEC["dataset"][0] == configurator.PREPARE_DEFAULT_DATASET


def test_bare_train_py_is_the_mini_lm_run():
    bare = configurator.parse(train.SPEC, [])
    assert bare == configurator.parse(train.SPEC, [str(ROOT / "config" / "mini_lm.py")])
    assert bare["dataset"] == "mini_lm" and bare["gradient_accumulation_steps"] == 8


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_mini_lm_keeps_its_tokens_per_step_on_1_2_4_8_ranks(world):
    cfg = configurator.parse(train.SPEC, [])
    micro = ranks.micro_steps_per_rank(cfg["gradient_accumulation_steps"], world, cfg["batch_size"])
    assert micro * world * cfg["batch_size"] * cfg["block_size"] == 131_072


@pytest.mark.parametrize("world, message", [
    (3, "cannot be shared by 3 ranks: run on 1, 2, 4, 8 ranks, or set gradient_accumulation_steps "
        "to a multiple of 3 (no split keeps 128 sequences per step on 3 ranks)"),
    (16, "cannot be shared by 16 ranks: run on 1, 2, 4, 8 ranks, or keep the same 128 sequences per "
         "step on 16 ranks with --gradient_accumulation_steps=16 --batch_size=8"),
])
def test_ranks_that_cannot_share_the_accumulation_get_what_works(world, message):
    with pytest.raises(configurator.ConfigError) as info:
        ranks.micro_steps_per_rank(8, world, 16)
    assert message in str(info.value)


def test_shipped_train_configs_load():
    for name in ("tiny", "cpu_demo", "mini_lm"):
        cfg = configurator.parse(train.SPEC, [str(ROOT / "config" / f"{name}.py")])
        assert cfg["max_iters"] > 0


def test_max_minutes_stops_evaluates_and_saves(data_root, tmp_path):
    """A wall-clock budget (here so small that one step exceeds it) ends the run like max_iters:
    a last evaluation at the step reached, then last.pt."""
    ckpt = run(data_root, tmp_path / "t", "--max_iters=1000", "--max_minutes=1e-9",
               "--eval_interval=1000")
    assert ckpt["iter_num"] == 1 and [h["iter"] for h in ckpt["history"]] == [0, 1]


def test_log_jsonl_holds_every_logged_step_and_evaluation(data_root, tmp_path, capsys):
    ckpt = run(data_root, tmp_path / "j", "--max_iters=10", "--eval_interval=5", "--log_interval=2")
    steps, evals = log_records(tmp_path / "j", "step"), log_records(tmp_path / "j", "eval")
    # each printed step line ends with the minutes left at the pace so far, none at the last step
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("iter ")]
    assert [line.split(":")[0] for line in lines] == ["iter 2", "iter 4", "iter 6", "iter 8", "iter 10"]
    assert all(re.search(r", ~\d+\.\d min to step 10$", line) for line in lines)
    assert lines[-1].endswith("~0.0 min to step 10")
    assert [r["iter"] for r in steps] == [2, 4, 6, 8, 10]
    assert all(r["tokens_per_s"] > 0 and r["loss"] > 0 for r in steps)
    # MFU where the device's peak FLOP/s is known (GPUs in hardware.PEAK_FLOPS), none on a CPU
    known_peak = hardware.peak_flops(hardware.resolve_device("auto")) > 0
    assert all((r["mfu"] is not None) == known_peak for r in steps)
    assert all(0 < r["mfu"] < 1 for r in steps if known_peak)
    assert [{k: v for k, v in r.items() if k not in ("kind", "time")} for r in evals] == ckpt["history"]


def test_benchmarks_time_train_py_own_step(monkeypatch):
    """bench.py's training-step figures come from train.set_up and train.train_step, not a copy."""
    from benchmarks.common import training_step
    calls = []
    real_step = train.train_step
    monkeypatch.setattr(train, "train_step", lambda run: calls.append(run) or real_step(run))
    model = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0, bias=False, vocab_size=300)
    step, tokens, _, run = training_step(model, batch=2, attention="eager")
    before = [p.detach().clone() for p in run.raw_model.parameters()]
    step()
    assert tokens == 2 * 16 and len(calls) == 3 and all(c is run for c in calls)
    assert run.raw_model.config.vocab_size == 300 and run.raw_model.config.attention == "eager"
    assert any(not torch.equal(a, p) for a, p in zip(before, run.raw_model.parameters()))


def test_epoch_order_takes_every_window_once_per_epoch(data_root):
    from training.batches import Batches
    folder = Path(data_root) / "tiny"
    batches = Batches(folder, 16, 4, seed=7, order="epoch")
    count = (len(batches.data["train"]) - 1) // 16
    first = batches.train_windows(count).tolist()
    second = batches.train_windows(count).tolist()
    assert sorted(first) == sorted(second) == list(range(0, 16 * count, 16))
    assert first != second  # each epoch shuffled anew
    again = Batches(folder, 16, 4, seed=7, order="epoch")
    again.drawn = count - 3  # as a checkpoint restores it: across the epoch boundary
    assert again.train_windows(6).tolist() == first[-3:] + second[:3]
    with pytest.raises(configurator.ConfigError, match="batch_order='sorted'"):
        Batches(folder, 16, 4, seed=7, order="sorted")


def test_schedules_and_optimizer_groups():
    from training import optim
    from model import GPT, GPTConfig
    cfg = {**configurator.parse(train.SPEC, []), "learning_rate": 1e-3, "min_lr": 1e-4,
           "warmup_iters": 10, "lr_decay_iters": 100, "max_iters": 100, "cooldown_fraction": 0.4}
    cosine = [optim.scheduled_lr(it, {**cfg, "lr_schedule": "cosine"}, 1e-3, 1e-4) for it in range(101)]
    assert cosine[0] == pytest.approx(1e-3 / 11) and cosine[9] == pytest.approx(1e-3 * 10 / 11)
    assert cosine[10] == pytest.approx(1e-3) and cosine[55] == pytest.approx(5.5e-4)
    assert cosine[100] == pytest.approx(1e-4)
    wsd = [optim.scheduled_lr(it, {**cfg, "lr_schedule": "wsd"}, 1e-3, 1e-4) for it in range(101)]
    assert wsd[10:61] == [1e-3] * 51  # constant until the last 40 steps
    assert wsd[80] == pytest.approx(1e-4 + 9e-4 * 20 / 40) and wsd[100] == pytest.approx(1e-4)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=50, block_size=8,
                          tied_head=False, value_embeddings=1))
    adamw, muon = optim.make_optimizers(model, {**cfg, "optimizer": "muon"}, "cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon | in_adamw == set(names.values()) and not in_muon & in_adamw
    assert in_muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.")
                       and p.dim() == 2}
    lr = optim.set_learning_rates([adamw, muon], 80, {**cfg, "lr_schedule": "wsd"})
    assert lr == adamw.param_groups[0]["lr"] == pytest.approx(5.5e-4)
    assert muon.param_groups[0]["lr"] == pytest.approx(cfg["muon_learning_rate"] * 0.55)


def test_bad_optimizer_or_schedule_stops_at_set_up(data_root, tmp_path, capsys):
    for bad, words in (("--optimizer=sgd", "optimizer='sgd'"), ("--lr_schedule=linear", "lr_schedule='linear'")):
        with pytest.raises(SystemExit) as stop:
            train.main(args(data_root, tmp_path / "bad", bad))
        assert stop.value.code == 2 and words in capsys.readouterr().err
        assert not (tmp_path / "bad" / "last.pt").exists()


def test_muon_equals_torch_muon_and_orthogonalizes():
    """optim.Muon in bfloat16 takes torch.optim.Muon's steps exactly; in float32 (the CPU choice)
    it stays within bfloat16's rounding of them; and its update's singular values sit near 1."""
    from training import optim
    torch.manual_seed(0)
    shapes = [(24, 8), (8, 24), (16, 16)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]

    def run(make):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = make(params)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        return params

    reference = run(lambda ps: torch.optim.Muon(ps, lr=0.02, momentum=0.95, weight_decay=0.0,
                                                adjust_lr_fn="original"))
    ours_bf16 = run(lambda ps: optim.Muon(ps, lr=0.02, momentum=0.95, orthogonalize_dtype=torch.bfloat16))
    ours_fp32 = run(lambda ps: optim.Muon(ps, lr=0.02, momentum=0.95, orthogonalize_dtype=torch.float32))
    for ref, bf16, fp32, w in zip(reference, ours_bf16, ours_fp32, start):
        assert torch.equal(ref, bf16)
        moved = (ref - w).abs().max()
        assert (fp32 - ref).abs().max() < 0.05 * moved  # bfloat16 keeps ~3 significant digits
    singular = torch.linalg.svdvals(optim.orthogonalize(torch.randn(32, 12), torch.float64))
    assert singular.min() > 0.6 and singular.max() < 1.3


def test_tensorboard_scalars_and_the_mid_training_sample(data_root, tmp_path, capsys):
    """The scalars in out_dir/tb, read back with TensorBoard's own reader, are log.jsonl's values
    at the same steps; the text sample printed at each sample_interval is the model's own at that
    step (the last one regenerated from last.pt) and is in TensorBoard too."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "tb_run"
    ckpt = run(data_root, out, "--max_iters=6", "--eval_interval=3", "--log_interval=2",
               "--tensorboard=True", "--sample_interval=3", "--sample_tokens=6")
    events = event_accumulator.EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    scalar = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    steps, evals = log_records(out, "step"), log_records(out, "eval")
    for tag, records, key in (("loss/train_step", steps, "loss"), ("lr", steps, "lr"),
                              ("grad_norm", steps, "grad_norm"), ("loss/val", evals, "val_loss"),
                              ("loss/train", evals, "train_loss")):
        assert [s for s, _ in scalar[tag]] == [r["iter"] for r in records], tag
        assert [v for _, v in scalar[tag]] == pytest.approx([r[key] for r in records], rel=1e-6), tag
    assert [r["iter"] for r in steps] == [2, 4, 6] and [r["iter"] for r in evals] == [0, 3, 6]

    printed = re.findall(r"^sample: (.*)$", capsys.readouterr().out, flags=re.MULTILINE)
    assert len(printed) == 3  # steps 0, 3 and 6
    model, tokenizer, _ = checkpoint.load_model(out / "last.pt")
    prompt = ckpt["config"]["sample_prompt"]
    new = model.generate([tokenizer.encode(prompt)], 6, temperature=0.8, top_k=200, seed=ckpt["config"]["seed"])[0]
    assert printed[-1] == repr(prompt + tokenizer.decode(new))
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors("sample/text_summary")]
    assert [s for s, _ in texts] == [0, 3, 6] and repr(texts[-1][1]) == printed[-1]
