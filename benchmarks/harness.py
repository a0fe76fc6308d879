"""bench.py harness: EleutherAI's lm-evaluation-harness scoring a checkpoint through serve.py.

    pip install lm-eval            # not a requirement of the project; any venv, then:
    python bench.py harness --ckpt=out/best.pt --lm_eval=/path/to/venv/bin/lm_eval

Two local tasks are written from the checkpoint's own held-out documents (the validation split of
the data it trained on; nothing is downloaded): `mini_lm_heldout_ppl`, a loglikelihood_rolling
task (bits per byte of whole documents, as the harness's wikitext task), and
`mini_lm_heldout_continuation`, a multiple-choice task (a document's real continuation against
three taken from other documents at the same place). serve.py runs as a real process; the
harness's `local-completions` model talks to it with echo and logprobs and counts tokens through
its /tokenize endpoint. The same two scores are then computed directly with model.py, the way the
harness defines them, and printed beside the harness's.
"""

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine

from core import checkpoint
from core import metrics

PPL_TASK = """task: mini_lm_heldout_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
CHOICE_TASK = """task: mini_lm_heldout_continuation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {cases}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
"""


def heldout_documents(tokenizer, ckpt):
    """The validation documents of the data the checkpoint trained on, as text."""
    folder = Path(ckpt["dataset"]["path"])
    meta = json.loads((folder / "meta.json").read_text())
    val = np.fromfile(folder / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    ends = np.flatnonzero(val == tokenizer.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(val[s:e].tolist()) for s, e in zip(starts, ends) if e > s]


def continuation_cases(tokenizer, docs, n_cases, context_tokens=24, continuation_tokens=8, seed=0):
    """Multiple-choice cases: a document's first context_tokens, its next continuation_tokens and
    three other documents' tokens at the same place, the real one at a random index."""
    rng = random.Random(seed)
    long = [tokenizer.encode(d) for d in docs]
    long = [ids for ids in long if len(ids) >= context_tokens + continuation_tokens]
    cases = []
    for i, ids in enumerate(long[:n_cases]):
        piece = slice(context_tokens, context_tokens + continuation_tokens)
        others = rng.sample([j for j in range(len(long)) if j != i], 3)
        choices = [tokenizer.decode(long[j][piece]) for j in others]
        label = rng.randrange(4)
        choices.insert(label, tokenizer.decode(ids[piece]))
        cases.append({"context": tokenizer.decode(ids[:context_tokens]), "choices": choices,
                      "label": label})
    return cases


def direct_scores(model, tokenizer, docs, cases):
    """The two tasks' scores computed with model.py, as the harness defines them: a document is
    scored after the end-of-text token; a choice is the tokens of context + choice past the
    (right-stripped) context's own count, scored after the context's tokens; accuracy takes the
    likeliest choice."""
    import torch

    eot = tokenizer.eot_id
    nll = [metrics.sliding_window_nll(model, np.array([eot] + tokenizer.encode(d)), model.config.block_size)
           for d in docs]
    bits_per_byte = metrics.bits_per_byte(np.concatenate(nll), sum(len(d.encode()) for d in docs))
    correct = 0
    for case in cases:
        # the harness moves the context's trailing whitespace to the front of each choice
        text = case["context"].rstrip()
        context = tokenizer.encode(text)
        scores = []
        for choice in case["choices"]:
            # scored as the harness sends it: the context's own tokens, then the tokens past them
            # in the encoding of the whole text (which may differ where the two texts meet)
            sequence = context + tokenizer.encode(case["context"] + choice)[len(context):]
            with torch.no_grad():
                logits = model(torch.tensor([sequence]))[0][0].double()
            logp = torch.log_softmax(logits, -1)
            scores.append(sum(float(logp[j - 1, sequence[j]])
                              for j in range(len(context), len(sequence))))
        correct += int(np.argmax(scores) == case["label"])
    return {"bits_per_byte": bits_per_byte, "acc": correct / max(1, len(cases))}


def run_harness(lm_eval, ckpt, block_size, task_dir, out_dir):
    """Start serve.py, run lm_eval's two tasks against it, return (its results, seconds)."""
    log = open(out_dir / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "serve.py", f"--ckpt={ckpt}", "--port", "0"],
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not any(x.startswith("serving ") for x in (out_dir / "serve.log").read_text().splitlines()):
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("serve.py did not start:\n" + (out_dir / "serve.log").read_text())
            time.sleep(0.2)
        url = next(x for x in (out_dir / "serve.log").read_text().splitlines()
                   if x.startswith("serving ")).rsplit(" on ", 1)[1]
        model_args = (f"model=mini-lm,base_url={url}/v1/completions,tokenizer_backend=remote,"
                      f"max_length={block_size - 1},num_concurrent=1,max_retries=1")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        t0 = time.time()
        result = subprocess.run([lm_eval, "--model", "local-completions", "--model_args", model_args,
                                 "--tasks", "mini_lm_heldout_ppl,mini_lm_heldout_continuation",
                                 "--include_path", str(task_dir), "--output_path", str(out_dir / "results")],
                                capture_output=True, text=True, env=env)
        seconds = time.time() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    if result.returncode:
        raise SystemExit(f"lm_eval failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    found = sorted((out_dir / "results").rglob("results_*.json"))
    return json.loads(found[-1].read_text())["results"], seconds


def bench_harness(ckpt, lm_eval, n_docs=50, n_cases=100):
    import shutil

    if not shutil.which(lm_eval):
        raise SystemExit(f"lm_eval={lm_eval!r} is not a command here: pip install 'lm-eval[api]' "
                         "(in any venv) and pass --lm_eval=/path/to/that/venv/bin/lm_eval")
    model, tokenizer, saved = checkpoint.load_model(ckpt)
    block = model.config.block_size
    docs = heldout_documents(tokenizer, saved)
    # whole documents that fit one window: the end-of-text token, the document, max_tokens 1
    short = [d for d in docs if 1 <= len(tokenizer.encode(d)) <= block - 2][:n_docs]
    cases = continuation_cases(tokenizer, docs, n_cases, min(24, block // 2), min(8, block // 4))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in short))
        (tmp / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
        (tmp / "tasks").mkdir()
        (tmp / "tasks" / "ppl.yaml").write_text(PPL_TASK.format(docs=tmp / "docs.jsonl"))
        (tmp / "tasks" / "choice.yaml").write_text(CHOICE_TASK.format(cases=tmp / "cases.jsonl"))
        harness, seconds = run_harness(lm_eval, ckpt, block, tmp / "tasks", tmp)
    direct = direct_scores(model, tokenizer, short, cases)
    ppl, choice = harness["mini_lm_heldout_ppl"], harness["mini_lm_heldout_continuation"]
    print(f"machine: {machine()}; {ckpt}; {len(short)} documents, {len(cases)} cases; lm_eval "
          f"took {seconds:.0f} s\n\n| task | metric | lm-evaluation-harness via serve.py | "
          "model.py directly |\n|---|---|---:|---:|")
    print(f"| mini_lm_heldout_ppl | bits_per_byte | {ppl['bits_per_byte,none']:.6f} | "
          f"{direct['bits_per_byte']:.6f} |")
    print(f"| mini_lm_heldout_continuation | acc | {choice['acc,none']:.4f} | {direct['acc']:.4f} |")
    return harness, direct
