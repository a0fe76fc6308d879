"""prepare.py: curate raw text and code into train.bin / val.bin for train.py.

    python prepare.py                                  # offline default corpus -> data/demo/
    python prepare.py config/prepare_mini_lm.py        # the 100M-token corpus for config/mini_lm.py
    python prepare.py --target_tokens=2_000_000 --workers=2
    python prepare.py config/prepare_translation.py    # a fine-tuning task, with out/best.pt's tokenizer

Stages, each in its own function (1-5 in curation/curate.py, the rest below), each resumable (a rerun skips
stages whose inputs and settings have not changed; --force redoes them all):
  1-5 curate:    collect (curation/sources.py) -> clean and quality-filter (curation/filters.py) -> exact and MinHash
                 dedup -> curated/*.jsonl.gz shards
  6   tokenizer: byte-level BPE (core/tokenizer.py) trained on a sample of the curated text
                 -> tokenizer.json
  7   encode:    tokens up to the budget, split by document -> train.bin, val.bin, meta.json
  8   report:    report.md and charts in report/ (curation/data_report.py)
Every output is written under a temporary name and renamed when complete.

With `task` set, prepare.py writes a fine-tuning task's data instead (prepare_task below): its
(prompt, response) pairs in core/tasks.py's template, encoded with a pretrained checkpoint's
tokenizer (never a new one), into train.bin/val.bin with a loss mask beside each (train.py learns
the responses only), the test pairs as test.jsonl, meta.json and report.md.
"""

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core import atomic, checkpoint, configurator, tasks
from core.tokenizer import GPT4_SPLIT_PATTERN, Tokenizer, count_chunks_parallel, train_bpe
from curation import bibles, cluster, data_report, filters
from curation import sources as sources_mod
from curation.curate import batched, curate, fraction_of, iter_curated, log
from curation.download import DownloadError

PIPELINE_VERSION = 1  # bump when a change to the code changes the outputs

SPEC = {
    # where
    "dataset": ("demo", "output folder <data_root>/<dataset>/; train.py's `dataset` key names it"),
    "data_root": ("data", "parent folder of datasets"),
    "sources": ([dict(kind="files", name="code", paths=["stdlib"], extensions=[".py"], weight=0.5),
                 dict(kind="wiki_offline", name="wiki", languages=["en", "es", "fr"], weight=0.5)],
                "list of source dicts (see curation/sources.py); weight = share of the token budget"),
    "workers": (os.cpu_count() or 1, "processes for cleaning/filtering/MinHash, threads for encoding"),
    "force": (False, "redo every stage even if its outputs are up to date"),
    "ray_address": ("", "run the curate and encode stages as Ray tasks: 'auto' or 'host:port' (a "
                        "running cluster), 'local' (Ray on this machine); empty = no Ray (curation/cluster.py)"),
    # budget
    "target_tokens": (4_000_000, "tokens to write (train + val): about what the offline default corpus "
                                 "holds; 100_000_000 for mini_lm"),
    "val_fraction": (0.02, "fraction of documents (chosen by a hash of their id) that go to val"),
    "collect_bytes_per_token": (6.0, "stop collecting a source once its curated text reaches "
                                     "share * target_tokens * this many bytes (0 = collect all)"),
    # clean
    "redact_pii": (True, "replace emails, public IP addresses and key-like secrets"),
    # quality filters (curation/filters.py)
    "disabled_filters": ([], "names of quality rules to skip, e.g. ['language', 'toxicity']"),
    **filters.SETTINGS,  # each rule's thresholds, declared beside the rule in curation/filters.py
    # dedup
    "dedup_exact": (True, "drop documents whose normalised text was seen before"),
    "minhash_threshold": (0.8, "near-dup: estimated Jaccard similarity at which a document is dropped"),
    "minhash_num_perm": (128, "near-dup: MinHash permutations (more = better estimate, slower)"),
    "minhash_shingle_words": (5, "near-dup: words per shingle"),
    "docs_per_shard": (10_000, "curated documents per .jsonl.gz shard"),
    # tokenizer
    "vocab_size": (8_192, "tokenizer vocabulary, including <|endoftext|> (mini_lm's config: 32,000)"),
    "tokenizer_sample_bytes": (20_000_000, "curated text sampled to train the tokenizer"),
    "tokenizer_pattern": (GPT4_SPLIT_PATTERN, "regex that pre-splits text before BPE"),
    # report
    "report_examples": (3, "dropped documents shown per filter in the report"),
    # a fine-tuning task instead of a corpus (prepare_task)
    "task": ("", "'translation' (English <-> Spanish Bible verses) or 'pairs' (task_files); "
                 "empty: curate a corpus"),
    "task_files": ({}, "pairs: JSONL files of prompt/response per split, e.g. "
                       "{'train': ['t.jsonl'], 'val': ['v.jsonl'], 'test': ['x.jsonl']}"),
    "tokenizer_from": ("", "task: the pretrained checkpoint (.pt) or tokenizer.json whose tokenizer "
                           "encodes the pairs"),
    "sword_root": ("/usr/share/sword", "translation: the folder of the SWORD Bible modules"),
    "book_split": ({}, "translation and bible sources: changes to the split of the Bibles' books "
                       "(curation/bibles.py BOOK_SPLIT), e.g. \"{'Luke': 'test', 'Acts': None}\" to "
                       "test on a Gospel instead of Acts"),
}
TASK_KEYS = {"task", "task_files", "tokenizer_from", "sword_root"}  # prepare_task's; no stage's

# Which keys change which stage's outputs; the rest (workers, force, paths) never change a byte.
STAGE_KEYS = {
    "curate": ["sources", "target_tokens", "collect_bytes_per_token", "redact_pii", "disabled_filters",
               *filters.SETTINGS, "dedup_exact", "minhash_threshold", "minhash_num_perm",
               "minhash_shingle_words", "docs_per_shard", "report_examples", "book_split"],
    "tokenizer": ["vocab_size", "tokenizer_sample_bytes", "tokenizer_pattern"],
    "encode": ["target_tokens", "val_fraction"],
    "report": [],
}
NON_OUTPUT_KEYS = {"dataset", "data_root", "workers", "force", "ray_address"}
STAGE_OUTPUTS = {"curate": ["curated/stats.json"], "tokenizer": ["tokenizer.json"],
                 "encode": ["train.bin", "val.bin", "meta.json"], "report": ["report.md"]}


# ------------------------------------------------------------------------------ stage bookkeeping

class Stages:
    """Marker files out/.done/<stage> hold a hash of everything a stage's outputs depend on."""

    def __init__(self, out, cfg):
        self.out = out
        self.dir = out / ".done"
        self.cfg = cfg
        self.timings = {}  # seconds of each stage run (not skipped) this time
        self.hashes, upstream = {}, str(PIPELINE_VERSION)
        for stage, keys in STAGE_KEYS.items():
            settings = json.dumps({k: cfg[k] for k in keys}, sort_keys=True, default=str)
            upstream = hashlib.sha256(f"{upstream}|{stage}|{settings}".encode()).hexdigest()
            self.hashes[stage] = upstream

    def done(self, stage):
        marker = self.dir / stage
        return (not self.cfg["force"] and marker.exists()
                and marker.read_text().strip() == self.hashes[stage]
                and all((self.out / f).exists() for f in STAGE_OUTPUTS[stage]))

    def start(self, stage):
        """Forget this stage and every later one, markers and outputs: the folder never holds a
        train.bin from an older run beside a newer tokenizer, and a crash leaves nothing complete."""
        later = list(STAGE_KEYS)[list(STAGE_KEYS).index(stage):]
        for name in later:
            (self.dir / name).unlink(missing_ok=True)
            for output in STAGE_OUTPUTS[name]:
                (self.out / output).unlink(missing_ok=True)

    def finish(self, stage):
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.dir / stage, self.hashes[stage])

    def run(self, stage, fn, *args):
        """fn(*args) unless the stage is up to date (then None), its time kept in self.timings."""
        if self.done(stage):
            log(f"[{stage}] up to date, skipped (--force redoes it)")
            return None
        self.start(stage)
        t0 = time.time()
        result = fn(*args)
        self.timings[stage] = round(time.time() - t0, 2)
        self.finish(stage)
        log(f"[{stage}] done in {self.timings[stage]:.1f}s")
        return result


# --------------------------------------------------------------------------- stage 6: tokenizer

def tokenizer_sample(cfg, source_specs, curated, stats):
    """The curated documents the tokenizer trains on: about tokenizer_sample_bytes of text, each
    document in or out by a hash of its id (the same sample on every run), as a generator."""
    total_bytes = sum(s["chars_kept"] for s in stats.values())
    keep = min(1.0, cfg["tokenizer_sample_bytes"] / max(1, total_bytes))
    for spec in source_specs:
        for doc in iter_curated(curated, spec["name"]):
            if fraction_of(f"{doc['source']}/{doc['id']}") < keep:
                yield doc["text"]


def train_tokenizer(cfg, source_specs, out, stats):
    t0 = time.time()
    sample = tokenizer_sample(cfg, source_specs, out / "curated", stats)
    chunk_counts = count_chunks_parallel(sample, cfg["tokenizer_pattern"], cfg["workers"])
    t1 = time.time()
    bar = tqdm(total=cfg["vocab_size"] - 257, desc="BPE merges", disable=None, file=sys.stderr)
    tokens = train_bpe(chunk_counts, cfg["vocab_size"],
                       progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    t2 = time.time()
    tokenizer = Tokenizer(tokens, cfg["tokenizer_pattern"])
    if tokenizer.vocab_size < cfg["vocab_size"]:
        log(f"warning: the sample ran out of pairs at vocab {tokenizer.vocab_size} "
            f"(< vocab_size={cfg['vocab_size']}); use more text or a smaller vocab")
    tokenizer.save(out / "tokenizer.json")
    log(f"tokenizer: {len(chunk_counts):,} unique chunks, pre-split {t1 - t0:.1f}s, "
        f"{len(tokens) - 256:,} merges {t2 - t1:.1f}s")
    return tokenizer


# ---------------------------------------------------------------------------- stage 7: encode

def allocate(available, weights, target):
    """Split target tokens between sources by weight; a source short of its share gives what it has
    and the rest is shared among the others (water-filling)."""
    quota, active, remaining = {}, [s for s in available], target
    while active:
        total_weight = sum(weights[s] for s in active)
        share = {s: remaining * weights[s] / total_weight for s in active}
        short = [s for s in active if available[s] <= share[s]]
        if not short:
            for s in active:
                quota[s] = int(share[s])
            leftover = remaining - sum(quota[s] for s in active)
            for s in active[:leftover]:
                quota[s] += 1
            break
        for s in short:
            quota[s] = available[s]
            remaining -= available[s]
        active = [s for s in active if s not in short]
    return quota


def _documents_in(doc_list, split, n_tokens):
    """How many of a source's documents (whole or cut short) the first n_tokens of a split hold."""
    used, total = 0, 0
    for s, n in doc_list:
        if s == split and total < n_tokens:
            used += 1
            total += n
    return used


def encode(cfg, source_specs, out, tokenizer, stats):
    """Stage 7: tokenize curated documents, split by document, write train.bin/val.bin/meta.json."""
    dtype = np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.uint32
    tmp = out / "encode.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    docs = {}  # source -> list of (split, n_tokens) in curated order
    for spec in source_specs:
        name = spec["name"]
        docs[name] = []
        files = {split: open(tmp / f"{name}.{split}", "wb") for split in ("train", "val")}
        bar = tqdm(desc=f"encode {name}", unit="doc", disable=None, file=sys.stderr)
        for batch in batched(iter_curated(out / "curated", name), 1024):
            texts = [d["text"] for d in batch]
            encoded = (cluster.encode_texts(tokenizer, texts, cluster.connect(cfg["ray_address"]))
                       if cfg["ray_address"] else tokenizer.encode_batch(texts, cfg["workers"]))
            for doc, ids in zip(batch, encoded):
                ids.append(tokenizer.eot_id)
                split = "val" if fraction_of(f"{name}/{doc['id']}") < cfg["val_fraction"] else "train"
                np.asarray(ids, dtype=dtype).tofile(files[split])
                docs[name].append((split, len(ids)))
            bar.update(len(batch))
        bar.close()
        for f in files.values():
            f.close()

    available = {name: sum(n for _, n in d) for name, d in docs.items()}
    weights = {spec["name"]: spec["weight"] for spec in source_specs}
    quota = allocate(available, weights, cfg["target_tokens"])
    if sum(available.values()) < cfg["target_tokens"]:
        log(f"note: the curated corpus has {sum(available.values()):,} tokens, fewer than "
            f"target_tokens={cfg['target_tokens']:,}; all of it is used")

    # Each source's quota is shared between train and val in proportion to what each split has, and
    # each split takes its documents in curated order (the last one may be cut short). Sources are
    # laid out one after another in each split; meta.json records where each begins and ends.
    keep = {}
    for name, doc_list in docs.items():
        have = {split: sum(n for s, n in doc_list if s == split) for split in ("train", "val")}
        val_quota = round(quota[name] * have["val"] / max(1, available[name]))
        keep[name] = {"val": min(have["val"], val_quota),
                      "train": min(have["train"], quota[name] - val_quota)}
    meta_splits = {}
    for split in ("train", "val"):
        n_total = sum(keep[name][split] for name in docs)
        if n_total == 0:
            raise configurator.ConfigError(f"the {split} split is empty; raise val_fraction "
                                           f"(now {cfg['val_fraction']}) or add data")
        path = out / f"{split}.bin"
        arr = np.memmap(f"{path}.tmp", dtype=dtype, mode="w+", shape=(n_total,))
        ranges, pos = {}, 0
        for name in docs:
            n = keep[name][split]
            arr[pos:pos + n] = np.fromfile(tmp / f"{name}.{split}", dtype=dtype, count=n)
            ranges[name] = [pos, pos + n]
            pos += n
        arr.flush()
        del arr
        meta_splits[split] = {"tokens": n_total, "source_ranges": ranges,
                              "documents": {name: _documents_in(docs[name], split, keep[name][split])
                                            for name in docs}}
    for split in ("train", "val"):  # rename only when both are complete
        os.replace(out / f"{split}.bin.tmp", out / f"{split}.bin")
    shutil.rmtree(tmp)

    meta = {
        "vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name,
        "eot_token_id": tokenizer.eot_id, "tokenizer": "tokenizer.json",
        "splits": meta_splits,
        "tokens_available_per_source": available, "token_quota_per_source": quota,
        "filter_counts": {name: dict(s["dropped"]) for name, s in stats.items()},
        "skipped_counts": {name: dict(s["skipped"]) for name, s in stats.items()},
        "cleaning_counts": {name: dict(s["cleaning"]) for name, s in stats.items()},
        "config": {k: v for k, v in cfg.items() if k not in NON_OUTPUT_KEYS},
        "pipeline_version": PIPELINE_VERSION,
    }
    atomic.write_text(out / "meta.json", json.dumps(meta, indent=1, default=str))
    return meta


# ----------------------------------------------------------------------------------------- main

def write_tokens(path, values, dtype):
    with atomic.replacing(path, "wb") as f:
        np.asarray(values, dtype=dtype).tofile(f)


def task_pairs(cfg):
    """({split: [(prompt, response, meta)]}, counts) of the configured task."""
    if cfg["task"] == "translation":
        return bibles.translation_task(cfg["sword_root"], bibles.book_split(cfg["book_split"]))
    if cfg["task"] != "pairs":
        raise configurator.ConfigError(f"task={cfg['task']!r} must be 'translation' or 'pairs'")
    if not isinstance(cfg["task_files"], dict) or not cfg["task_files"].get("train"):
        raise configurator.ConfigError("task='pairs' needs task_files={'train': [...], 'val': [...], "
                                       "'test': [...]} (JSONL with 'prompt' and 'response')")
    splits = {split: [(p, r, {"file": str(path)}) for path in cfg["task_files"].get(split, [])
                      for p, r in tasks.read_jsonl_pairs(path)] for split in ("train", "val", "test")}
    return splits, {f"{split}_pairs": len(pairs) for split, pairs in splits.items()}


def prepare_task(cfg, out):
    """A fine-tuning task's data: train/val bins of template-rendered pairs with their loss masks,
    the pairs of every split as JSONL, meta.json and report.md, encoded with tokenizer_from's tokenizer."""
    source = cfg["tokenizer_from"]
    if not source:
        raise configurator.ConfigError("a task is encoded with the pretrained model's tokenizer: set "
                                       "tokenizer_from=out/best.pt (or a tokenizer.json)")
    tokenizer = (Tokenizer.from_dict(checkpoint.load(source)["tokenizer"], origin=source)
                 if source.endswith(".pt") else Tokenizer.load(source))
    splits, counts = task_pairs(cfg)
    if not splits["train"] or not splits["val"]:
        raise configurator.ConfigError(f"task {cfg['task']!r}: the train and val splits need pairs "
                                       f"(found {counts})")
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
    meta = {"vocab_size": tokenizer.vocab_size, "dtype": np.dtype(dtype).name, "tokenizer": "tokenizer.json",
            "task": {"name": cfg["task"], "prompt_template": tasks.PROMPT_TEMPLATE,
                     "tokenizer_from": source, **counts}, "splits": {}}
    for split in ("train", "val"):
        ids, mask = [], []
        for prompt, response, _ in splits[split]:
            pair_ids, pair_mask = tasks.encode_pair(tokenizer, prompt, response)
            ids += pair_ids
            mask += pair_mask
        write_tokens(out / f"{split}.mask.bin", mask, np.uint8)
        write_tokens(out / f"{split}.bin", ids, dtype)
        meta["splits"][split] = {"pairs": len(splits[split]), "tokens": len(ids), "targets": sum(mask)}
    for split in ("train", "val", "test"):  # eval.py's pairs (val to choose its decoding settings on,
        # test to report) and the train pairs its retrieval baseline searches
        atomic.write_text(out / f"{split}.jsonl", "".join(
            json.dumps({"prompt": p, "response": r, **m}, ensure_ascii=False) + "\n"
            for p, r, m in splits[split]))
    tokenizer.save(out / "tokenizer.json")
    atomic.write_text(out / "meta.json", json.dumps(meta, indent=1))
    if cfg["task"] == "translation":  # the training pairs hold no verse of the other books: by content
        checked = bibles.check_held_out(cfg["sword_root"], [out], bibles.book_split(cfg["book_split"]))
        log(f"held-out check: none of {checked:,} test, validation and held-out verses in {out}'s training pairs")
    example = splits["train"][0]
    atomic.write_text(out / "report.md", "\n".join([
        f"# Task data: {cfg['task']}", "", f"Encoded with the tokenizer of `{source}`.", "",
        "| split | pairs | tokens | targets (loss mask 1) |", "|---|---:|---:|---:|",
        *(f"| {s} | {v['pairs']:,} | {v['tokens']:,} | {v['targets']:,} |" for s, v in meta["splits"].items()),
        f"| test (test.jsonl) | {len(splits['test']):,} | | |", "",
        "Counts: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), "",
        "A pair as the model sees it (the response and the end-of-text token are its targets):", "",
        "```", tasks.render_prompt(example[0]) + example[1] + "<|endoftext|>", "```", ""]))
    log(f"wrote {out}/: task {cfg['task']!r}, " + ", ".join(
        f"{s} {v['pairs']:,} pairs ({v['tokens']:,} tokens)" for s, v in meta["splits"].items())
        + f", test.jsonl {len(splits['test']):,} pairs")
    return out


def run(cfg):
    out = Path(cfg["data_root"]) / cfg["dataset"]
    out.mkdir(parents=True, exist_ok=True)
    if cfg["task"]:
        return prepare_task(cfg, out)
    source_specs = [{**spec, "book_split": spec["book_split"] or cfg["book_split"]} if spec["kind"] == "bible"
                    else spec for spec in sources_mod.resolve_sources(cfg["sources"])]
    if not 0 < cfg["val_fraction"] < 1:
        raise configurator.ConfigError(f"val_fraction={cfg['val_fraction']} must be in (0, 1)")
    unknown = set(cfg["disabled_filters"]) - set(filters.PROSE_RULES) - set(filters.CODE_RULES)
    if unknown:
        raise configurator.ConfigError(f"disabled_filters: unknown rule(s) {sorted(unknown)}; "
                                       f"known: {sorted(set(filters.PROSE_RULES) | set(filters.CODE_RULES))}")
    stages = Stages(out, cfg)
    stats = stages.run("curate", curate, cfg, source_specs, out)
    if stats is None:
        stats = json.loads((out / "curated" / "stats.json").read_text())
    tokenizer = stages.run("tokenizer", train_tokenizer, cfg, source_specs, out, stats)
    if tokenizer is None:
        tokenizer = Tokenizer.load(out / "tokenizer.json")
    meta = stages.run("encode", encode, cfg, source_specs, out, tokenizer, stats)
    if meta is None:
        meta = json.loads((out / "meta.json").read_text())
    stages.run("report", data_report.write_report, out, cfg, stats, meta, tokenizer)
    for spec in source_specs:
        if spec["kind"] == "bible":  # its training books' text, and none of the others': by content
            checked = bibles.check_held_out(spec["sword_root"], [out], bibles.book_split(spec["book_split"]))
            log(f"held-out check: none of {checked:,} test, validation and held-out verses in {out}")
    log(f"wrote {out}/: train.bin {meta['splits']['train']['tokens']:,} tokens, val.bin "
        f"{meta['splits']['val']['tokens']:,} tokens, vocab {meta['vocab_size']:,}; see {out}/report.md")
    if stages.timings:
        atomic.write_text(out / "timings.json", json.dumps(stages.timings, indent=1))
    return out


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="prepare.py")
    with configurator.errors_exit(configurator.ConfigError, sources_mod.SourceError, DownloadError,
                                  cluster.RayUnavailable, tasks.TaskError, checkpoint.CheckpointError):
        run(cfg)


if __name__ == "__main__":
    main()
