"""curate.py: prepare.py's stages 1-5: collect each source (sources.py), clean and quality-filter
its documents (filters.py) in worker processes, drop exact and MinHash near-duplicates, and write
the kept documents as curated/<source>-NNNNN.jsonl.gz shards with statistics for the report."""

import gzip
import hashlib
import json
import math
import os
import shutil
import sys
from collections import Counter, defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core import atomic
from curation import cluster
from curation import dedup
from curation import filters
from curation import data_report
from curation import sources as sources_mod
from curation import web


def log(message):
    tqdm.write(message, file=sys.stderr)


def fraction_of(key):
    """A stable number in [0, 1) from a string: decides samples and splits independent of order."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2 ** 64



# ------------------------------------------------------------------------- stages 2-3 (in workers)

_worker_cfg = None


def _init_worker(cfg):
    global _worker_cfg
    _worker_cfg = cfg


def curate_batch(cfg, items):
    """process_batch with cfg set first: one Ray task (cluster.ordered_map) on any worker."""
    _init_worker(cfg)
    return process_batch(items)


def clean_item(item, cfg):
    """(cleaned text, doc_type, result) for one collected item. The result holds the counts, and
    says why when the document is dropped here (text ""). An HTML page (doc_type "html", from the
    warc and web sources) first becomes its main text and metadata (web.html_document), then prose."""
    _, doc_type, raw, *meta = item
    counts = Counter()
    result = {"raw_chars": len(raw), "counts": counts, "dropped": None}
    too_large = filters.too_large(raw, cfg)
    if too_large:
        head = raw[:400]
        result.update(dropped="too_large", reason=too_large,
                      snippet=head.decode("utf-8", "replace") if isinstance(head, bytes) else head)
        return "", doc_type, result
    if doc_type == "html":
        raw, result["meta"] = web.html_document(raw, meta[0])
        doc_type, result["doc_type"], result["raw_chars"] = "prose", "prose", len(raw)
        if not raw:
            result.update(dropped="no_text", reason=f"the {meta[0]['extractor']} extractor found "
                          "no main text", snippet="")
            return "", doc_type, result
    try:
        text = filters.clean(raw, doc_type, pii=cfg["redact_pii"], counts=counts)
        if isinstance(raw, bytes):
            result["raw_chars"] = len(text)  # characters, not bytes, for the length chart
    except filters.BinaryFile as e:
        result.update(dropped="binary", reason=str(e), snippet="")
        text = ""
    return text, doc_type, result


def process_batch(items):
    """Clean and filter (doc_id, doc_type, raw[, meta]) items; for kept documents also compute the
    dedup keys."""
    cfg = _worker_cfg
    texts, doc_types, results = zip(*[clean_item(item, cfg) for item in items]) if items else ((), (), ())
    alive = [i for i, r in enumerate(results) if r["dropped"] is None]
    verdicts = filters.filter_batch([texts[i] for i in alive], [doc_types[i] for i in alive], cfg)
    kept = []
    for i, failed in zip(alive, verdicts):
        if failed:
            results[i].update(dropped=failed[0], reason=failed[1], snippet=texts[i][:400])
        else:
            kept.append(i)
    for i, keys in zip(kept, dedup.dedup_keys([texts[i] for i in kept], cfg)):
        results[i].update(text=texts[i], **keys)
    return list(results)


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


def batched(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _histogram(lengths):
    return np.histogram(lengths, bins=data_report.LENGTH_BINS + [10 ** 9])[0].tolist()


META_COUNTED = ("repo", "license", "language")  # kept documents counted by these metadata fields
NAMED_IN_FULL = {"license_unknown", "license_not_allowed", "clone_failed"}  # every one in the report


def tally_document(s, cfg, name, item, r, deduplicator, writer):
    """Count one processed document into the source's statistics s; dedup it and write it if it is
    kept. Returns the UTF-8 bytes it added to the curated shards (0 when dropped)."""
    doc_id, doc_type, _, *meta = item
    doc_type, meta = r.get("doc_type", doc_type), [r["meta"]] if "meta" in r else meta
    s["docs_in"] += 1
    s["chars_in"] += r["raw_chars"]
    s["cleaning"].update(r["counts"])
    s["lengths_in"].append(r["raw_chars"])
    dropped = (r["dropped"], r.get("reason")) if r["dropped"] else \
        deduplicator.check(f"{name}/{doc_id}", r)
    if dropped:
        rule, reason = dropped
        s["dropped"][rule] += 1
        if len(s["examples"][rule]) < cfg["report_examples"]:
            snippet = r["snippet"] if "snippet" in r else r["text"][:400]
            s["examples"][rule].append({"id": doc_id, "reason": reason, "snippet": snippet})
        return 0
    writer.write({"id": doc_id, "source": name, "doc_type": doc_type, "text": r["text"],
                  **({"meta": meta[0]} if meta and meta[0] else {})})
    for key in META_COUNTED:
        if meta and meta[0] and key in meta[0]:
            s["kept_by"][key][str(meta[0][key])] += 1
    s["docs_kept"] += 1
    s["chars_kept"] += len(r["text"])
    s["lengths_kept"].append(len(r["text"]))
    return len(r["text"].encode("utf-8"))


def curate_source(cfg, spec, folder, process, deduplicator, byte_limit, batch_docs):
    """Collect, clean, filter and dedup one source into its shards; returns its statistics. The
    source stops right after the document that brings its curated bytes to byte_limit, whatever
    the batch size, so every worker count (and a Ray cluster) writes the same shards."""
    name = spec["name"]
    s = {"docs_in": 0, "docs_kept": 0, "chars_in": 0, "chars_kept": 0, "dropped": Counter(),
         "skipped": Counter(), "cleaning": Counter(), "examples": defaultdict(list),
         "skipped_examples": defaultdict(list), "limit_reached": False, "lengths_in": [],
         "lengths_kept": [], "kept_by": defaultdict(Counter)}
    kept_bytes = 0

    def warn(kind, message):
        s["skipped"][kind] += 1
        if message and (kind in NAMED_IN_FULL
                        or len(s["skipped_examples"][kind]) < cfg["report_examples"]):
            s["skipped_examples"][kind].append(message)
        if message and s["skipped"][kind] <= 20:
            log(f"warning [{name}]: {message}")
        elif message and s["skipped"][kind] == 21:
            log(f"warning [{name}]: further '{kind}' warnings are counted, not shown")

    documents = sources_mod.iter_source(spec, warn)
    writer = ShardWriter(folder, name, cfg["docs_per_shard"])
    bar = tqdm(desc=f"curate {name}", unit="doc", disable=None, file=sys.stderr)
    for batch in batched(documents, batch_docs):
        for item, r in zip(batch, process(batch)):
            kept_bytes += tally_document(s, cfg, name, item, r, deduplicator, writer)
            if kept_bytes >= byte_limit:
                break
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
    s["length_histogram_in"] = _histogram(s.pop("lengths_in"))
    s["length_histogram_kept"] = _histogram(s.pop("lengths_kept"))
    if s["docs_kept"] == 0:
        raise sources_mod.SourceError(
            f"source {name!r} kept no documents out of {s['docs_in']} (dropped: "
            f"{dict(s['dropped'])}, skipped: {dict(s['skipped'])}); check its paths or loosen the filters")
    return s


def curate(cfg, source_specs, out):
    """Stages 1-5: stream every source through clean, filter and dedup into curated/ shards. The
    per-batch work runs in worker processes, or as Ray tasks when ray_address is set (cluster.py)."""
    tmp = out / "curated.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total_weight = sum(s["weight"] for s in source_specs)
    deduplicator = dedup.Deduplicator(cfg)
    on_ray = bool(cfg["ray_address"])
    width = cluster.connect(cfg["ray_address"]) if on_ray else max(1, cfg["workers"])
    pool = Pool(width, _init_worker, (cfg,)) if width > 1 and not on_ray else None
    _init_worker(cfg)

    def process(batch):  # 128 documents per task: the toxicity classifier has a cost per call
        tasks = list(batched(batch, 128))
        if on_ray:
            results = cluster.ordered_map(curate_batch, cfg, tasks)
        else:
            results = pool.map(process_batch, tasks) if pool else map(process_batch, tasks)
        return [r for rs in results for r in rs]

    stats = {}
    try:
        for spec in source_specs:
            byte_limit = math.inf
            if cfg["collect_bytes_per_token"] > 0:
                byte_limit = (spec["weight"] / total_weight * cfg["target_tokens"]
                              * cfg["collect_bytes_per_token"])
            stats[spec["name"]] = curate_source(cfg, spec, tmp, process, deduplicator, byte_limit,
                                                128 * width)
    finally:
        if pool:
            pool.close()
            pool.join()
    atomic.write_text(tmp / "stats.json", json.dumps(stats, indent=1, sort_keys=True, default=dict))
    shutil.rmtree(out / "curated", ignore_errors=True)
    os.replace(tmp, out / "curated")
    return stats
