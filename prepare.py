"""prepare.py: curate raw text and code into train.bin / val.bin for train.py.

    python prepare.py                                  # offline default corpus -> data/demo/
    python prepare.py config/prepare_mini_lm.py        # the 100M-token corpus for config/mini_lm.py
    python prepare.py --target_tokens=2_000_000 --workers=2

Stages, each in its own function below, each resumable (a rerun skips stages whose inputs and
settings have not changed; --force redoes them all):
  1-5 curate:    collect (sources.py) -> clean and quality-filter (filters.py) -> exact and MinHash
                 dedup -> curated/*.jsonl.gz shards
  6   tokenizer: byte-level BPE trained on a sample of the curated text -> tokenizer.json
  7   encode:    tokens up to the budget, split by document -> train.bin, val.bin, meta.json
  8   report:    report.md and charts in report/ (prepare_report.py)
Every output is written under a temporary name and renamed when complete.
"""

import gzip
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import Counter, defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH
from tqdm import tqdm

import atomic
import configurator
import filters
import prepare_report
import sources as sources_mod
from tokenizer import GPT4_SPLIT_PATTERN, Tokenizer, count_chunks_parallel, train_bpe

PIPELINE_VERSION = 1  # bump when a change to the code changes the outputs

SPEC = {
    # where
    "dataset": ("demo", "output folder <data_root>/<dataset>/; train.py's `dataset` key names it"),
    "data_root": ("data", "parent folder of datasets"),
    "sources": ([dict(kind="files", name="code", paths=["stdlib"], extensions=[".py"], weight=0.5),
                 dict(kind="wiki_offline", name="wiki", languages=["en", "es", "fr"], weight=0.5)],
                "list of source dicts (see sources.py); weight = share of the token budget"),
    "workers": (os.cpu_count() or 1, "processes for cleaning/filtering/MinHash, threads for encoding"),
    "force": (False, "redo every stage even if its outputs are up to date"),
    # budget
    "target_tokens": (4_000_000, "tokens to write (train + val): about what the offline default corpus "
                                 "holds; 100_000_000 for mini_lm"),
    "val_fraction": (0.02, "fraction of documents (chosen by a hash of their id) that go to val"),
    "collect_bytes_per_token": (6.0, "stop collecting a source once its curated text reaches "
                                     "share * target_tokens * this many bytes (0 = collect all)"),
    # clean
    "redact_pii": (True, "replace emails, public IP addresses and key-like secrets"),
    # quality filters (filters.py)
    "disabled_filters": ([], "names of quality rules to skip, e.g. ['language', 'toxicity']"),
    **filters.SETTINGS,  # each rule's thresholds, declared beside the rule in filters.py
    # dedup
    "dedup_exact": (True, "drop documents whose normalised text was seen before"),
    "minhash_threshold": (0.8, "near-dup: estimated Jaccard similarity at which a document is dropped"),
    "minhash_num_perm": (128, "near-dup: MinHash permutations (more = better estimate, slower)"),
    "minhash_shingle_words": (5, "near-dup: words per shingle"),
    "docs_per_shard": (10_000, "curated documents per .jsonl.gz shard"),
    # tokenizer
    "vocab_size": (32_000, "tokenizer vocabulary, including <|endoftext|>"),
    "tokenizer_sample_bytes": (20_000_000, "curated text sampled to train the tokenizer"),
    "tokenizer_pattern": (GPT4_SPLIT_PATTERN, "regex that pre-splits text before BPE"),
    # report
    "report_examples": (3, "dropped documents shown per filter in the report"),
}

# Which keys change which stage's outputs; the rest (workers, force, paths) never change a byte.
STAGE_KEYS = {
    "curate": ["sources", "target_tokens", "collect_bytes_per_token", "redact_pii", "disabled_filters",
               *filters.SETTINGS, "dedup_exact", "minhash_threshold", "minhash_num_perm",
               "minhash_shingle_words", "docs_per_shard", "report_examples"],
    "tokenizer": ["vocab_size", "tokenizer_sample_bytes", "tokenizer_pattern"],
    "encode": ["target_tokens", "val_fraction"],
    "report": [],
}
NON_OUTPUT_KEYS = {"dataset", "data_root", "workers", "force"}
STAGE_OUTPUTS = {"curate": ["curated/stats.json"], "tokenizer": ["tokenizer.json"],
                 "encode": ["train.bin", "val.bin", "meta.json"], "report": ["report.md"]}


def log(message):
    tqdm.write(message, file=sys.stderr)


def fraction_of(key):
    """A stable number in [0, 1) from a string: decides samples and splits independent of order."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2 ** 64


# ------------------------------------------------------------------------------ stage bookkeeping

class Stages:
    """Marker files out/.done/<stage> hold a hash of everything a stage's outputs depend on."""

    def __init__(self, out, cfg):
        self.out = out
        self.dir = out / ".done"
        self.cfg = cfg
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


# ------------------------------------------------------------------------- stages 2-3 (in workers)

_worker_cfg = None


def _init_worker(cfg):
    global _worker_cfg
    _worker_cfg = cfg


def shingles(text, n):
    words = text.lower().split()
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def process_batch(items):
    """Clean and filter (doc_id, doc_type, raw) items; for kept documents also compute dedup keys."""
    cfg = _worker_cfg
    results, texts = [], []
    for _, doc_type, raw in items:
        counts = Counter()
        result = {"raw_chars": len(raw), "counts": counts, "dropped": None}
        try:
            text = filters.clean(raw, doc_type, pii=cfg["redact_pii"], counts=counts)
            if isinstance(raw, bytes):
                result["raw_chars"] = len(text)  # characters, not bytes, for the length chart
        except filters.BinaryFile as e:
            result.update(dropped="binary", reason=str(e), snippet="")
            text = ""
        results.append(result)
        texts.append(text)
    alive = [i for i, r in enumerate(results) if r["dropped"] is None]
    verdicts = filters.filter_batch([texts[i] for i in alive], [items[i][1] for i in alive], cfg)
    for i, failed in zip(alive, verdicts):
        r, text = results[i], texts[i]
        if failed:
            r.update(dropped=failed[0], reason=failed[1], snippet=text[:400])
            continue
        normalised = " ".join(text.lower().split())
        minhash = MinHash(num_perm=cfg["minhash_num_perm"], seed=1, scheme="affine32")
        minhash.update_batch([s.encode("utf-8") for s in shingles(text, cfg["minhash_shingle_words"])])
        r.update(text=text, exact_key=hashlib.sha1(normalised.encode("utf-8")).digest(),
                 minhash=minhash.hashvalues)
    return results


# -------------------------------------------------------------------------------- stage 1-5: curate

class ShardWriter:
    """Curated documents as gzip JSONL shards; gzip mtime 0 keeps reruns byte-identical."""

    def __init__(self, folder, source, docs_per_shard):
        self.folder, self.source, self.docs_per_shard = folder, source, docs_per_shard
        self.file, self.in_shard, self.shards = None, 0, 0

    def write(self, record):
        if self.file is None or self.in_shard >= self.docs_per_shard:
            self.close()
            path = self.folder / f"{self.source}-{self.shards:05d}.jsonl.gz"
            self.file = gzip.GzipFile(filename="", mode="wb", fileobj=open(path, "wb"), mtime=0,
                                      compresslevel=6)
            self.shards += 1
            self.in_shard = 0
        self.file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self.in_shard += 1

    def close(self):
        if self.file is not None:
            fileobj = self.file.fileobj
            self.file.close()
            fileobj.close()
            self.file = None


def iter_curated(folder, source):
    for shard in sorted(Path(folder).glob(f"{source}-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def _batched(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _histogram(lengths):
    return np.histogram(lengths, bins=prepare_report.LENGTH_BINS + [10 ** 9])[0].tolist()


def curate_source(cfg, spec, folder, process, dedup, byte_limit):
    """Collect, clean, filter and dedup one source into its shards; returns its statistics."""
    name = spec["name"]
    s = {"docs_in": 0, "docs_kept": 0, "chars_in": 0, "chars_kept": 0, "dropped": Counter(),
         "skipped": Counter(), "cleaning": Counter(), "examples": defaultdict(list),
         "limit_reached": False}
    lengths_in, lengths_kept, kept_bytes = [], [], 0

    def warn(kind, message):
        s["skipped"][kind] += 1
        if message and s["skipped"][kind] <= 20:
            log(f"warning [{name}]: {message}")
        elif message and s["skipped"][kind] == 21:
            log(f"warning [{name}]: further '{kind}' warnings are counted, not shown")

    documents = sources_mod.iter_source(spec, warn)
    writer = ShardWriter(folder, name, cfg["docs_per_shard"])
    bar = tqdm(desc=f"curate {name}", unit="doc", disable=None, file=sys.stderr)
    for batch in _batched(documents, 128 * max(1, cfg["workers"])):
        for (doc_id, doc_type, _), r in zip(batch, process(batch)):
            s["docs_in"] += 1
            s["chars_in"] += r["raw_chars"]
            s["cleaning"].update(r["counts"])
            lengths_in.append(r["raw_chars"])
            dropped = (r["dropped"], r.get("reason")) if r["dropped"] else \
                dedup.check(f"{name}/{doc_id}", r)
            if dropped:
                rule, reason = dropped
                s["dropped"][rule] += 1
                if len(s["examples"][rule]) < cfg["report_examples"]:
                    snippet = r["snippet"] if "snippet" in r else r["text"][:400]
                    s["examples"][rule].append({"id": doc_id, "reason": reason, "snippet": snippet})
                continue
            writer.write({"id": doc_id, "source": name, "doc_type": doc_type, "text": r["text"]})
            s["docs_kept"] += 1
            s["chars_kept"] += len(r["text"])
            lengths_kept.append(len(r["text"]))
            kept_bytes += len(r["text"].encode("utf-8"))
        bar.update(len(batch))
        if kept_bytes >= byte_limit:
            s["limit_reached"] = True
            log(f"[{name}] collected {kept_bytes:,} curated bytes, enough for its share of "
                f"target_tokens; stopping this source (collect_bytes_per_token=0 takes all)")
            break
    bar.close()
    writer.close()
    if hasattr(documents, "close"):
        documents.close()
    s["length_histogram_in"] = _histogram(lengths_in)
    s["length_histogram_kept"] = _histogram(lengths_kept)
    if s["docs_kept"] == 0:
        raise SystemExit(f"error: source {name!r} kept no documents out of {s['docs_in']} "
                         f"(dropped: {dict(s['dropped'])}, skipped: {dict(s['skipped'])}); "
                         "check its paths or loosen the filters")
    return s


class Deduplicator:
    """Exact (hash of normalised text) and near-duplicate (MinHash LSH) checks against every document
    kept so far, across all sources."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.exact_seen = set()
        self.lsh = MinHashLSH(threshold=cfg["minhash_threshold"], num_perm=cfg["minhash_num_perm"])

    def check(self, key, result):
        """(rule, reason) if the processed document duplicates a kept one; else remember it, None."""
        if self.cfg["dedup_exact"]:
            if result["exact_key"] in self.exact_seen:
                return "exact_duplicate", "same normalised text as an earlier document"
            self.exact_seen.add(result["exact_key"])
        minhash = MinHash(num_perm=self.cfg["minhash_num_perm"], seed=1, scheme="affine32",
                          hashvalues=result["minhash"])
        similar = self.lsh.query(minhash)
        if similar:
            return "near_duplicate", f"Jaccard >= ~{self.cfg['minhash_threshold']} with {min(similar)}"
        self.lsh.insert(key, minhash)
        return None


def curate(cfg, source_specs, out):
    """Stages 1-5: stream every source through clean, filter and dedup into curated/ shards."""
    tmp = out / "curated.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total_weight = sum(s["weight"] for s in source_specs)
    dedup = Deduplicator(cfg)
    pool = Pool(cfg["workers"], _init_worker, (cfg,)) if cfg["workers"] > 1 else None
    _init_worker(cfg)

    def process(batch):  # 128 documents per task: the toxicity classifier has a cost per call
        tasks = list(_batched(batch, 128))
        results = pool.map(process_batch, tasks) if pool else map(process_batch, tasks)
        return [r for rs in results for r in rs]

    stats = {}
    try:
        for spec in source_specs:
            byte_limit = math.inf
            if cfg["collect_bytes_per_token"] > 0:
                byte_limit = (spec["weight"] / total_weight * cfg["target_tokens"]
                              * cfg["collect_bytes_per_token"])
            stats[spec["name"]] = curate_source(cfg, spec, tmp, process, dedup, byte_limit)
    finally:
        if pool:
            pool.close()
            pool.join()
    atomic.write_text(tmp / "stats.json", json.dumps(stats, indent=1, sort_keys=True, default=dict))
    shutil.rmtree(out / "curated", ignore_errors=True)
    os.replace(tmp, out / "curated")
    return stats


# --------------------------------------------------------------------------- stage 6: tokenizer

def train_tokenizer(cfg, source_specs, out, stats):
    total_bytes = sum(s["chars_kept"] for s in stats.values())
    keep = min(1.0, cfg["tokenizer_sample_bytes"] / max(1, total_bytes))

    def sample():
        for spec in source_specs:
            for doc in iter_curated(out / "curated", spec["name"]):
                if fraction_of(f"{doc['source']}/{doc['id']}") < keep:
                    yield doc["text"]

    t0 = time.time()
    chunk_counts = count_chunks_parallel(sample(), cfg["tokenizer_pattern"], cfg["workers"])
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
        for batch in _batched(iter_curated(out / "curated", name), 1024):
            for doc, ids in zip(batch, tokenizer.encode_batch([d["text"] for d in batch],
                                                              cfg["workers"])):
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
            raise SystemExit(f"error: the {split} split is empty; raise val_fraction "
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

def run(cfg):
    out = Path(cfg["data_root"]) / cfg["dataset"]
    out.mkdir(parents=True, exist_ok=True)
    source_specs = sources_mod.resolve_sources(cfg["sources"])
    if not 0 < cfg["val_fraction"] < 1:
        raise configurator.ConfigError(f"val_fraction={cfg['val_fraction']} must be in (0, 1)")
    unknown = set(cfg["disabled_filters"]) - set(filters.PROSE_RULES) - set(filters.CODE_RULES)
    if unknown:
        raise configurator.ConfigError(f"disabled_filters: unknown rule(s) {sorted(unknown)}; "
                                       f"known: {sorted(set(filters.PROSE_RULES) | set(filters.CODE_RULES))}")
    stages = Stages(out, cfg)
    timings = {}

    def stage(name, fn):
        if stages.done(name):
            log(f"[{name}] up to date, skipped (--force redoes it)")
            return None
        stages.start(name)
        t0 = time.time()
        result = fn()
        timings[name] = round(time.time() - t0, 2)
        stages.finish(name)
        log(f"[{name}] done in {timings[name]:.1f}s")
        return result

    stats = stage("curate", lambda: curate(cfg, source_specs, out))
    if stats is None:
        stats = json.loads((out / "curated" / "stats.json").read_text())
    tokenizer = stage("tokenizer", lambda: train_tokenizer(cfg, source_specs, out, stats))
    if tokenizer is None:
        tokenizer = Tokenizer.load(out / "tokenizer.json")
    meta = stage("encode", lambda: encode(cfg, source_specs, out, tokenizer, stats))
    if meta is None:
        meta = json.loads((out / "meta.json").read_text())

    stage("report", lambda: prepare_report.write_report(out, cfg, stats, meta, tokenizer))
    log(f"wrote {out}/: train.bin {meta['splits']['train']['tokens']:,} tokens, val.bin "
        f"{meta['splits']['val']['tokens']:,} tokens, vocab {meta['vocab_size']:,}; see {out}/report.md")
    if timings:
        atomic.write_text(out / "timings.json", json.dumps(timings, indent=1))
    return out


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="prepare.py")
    try:
        run(cfg)
    except (configurator.ConfigError, sources_mod.SourceError, sources_mod.DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
