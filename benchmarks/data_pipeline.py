"""bench.py prepare: the data pipeline's stages timed on the offline default corpus (data/demo)."""

import json
import os
import time
from pathlib import Path

from benchmarks.common import machine

from benchmarks import warc_files
from curation import cluster
from curation import curate
from curation import dedup
from curation import filters
from curation import sources
from curation import web
from core.tokenizer import Tokenizer
from core.tokenizer import count_chunks_parallel, train_bpe
import prepare


def row(what, seconds, docs=None, chars=None, note=""):
    rate = []
    if docs:
        rate.append(f"{docs / seconds:,.0f} docs/s")
    if chars:
        rate.append(f"{chars / seconds / 1e6:.2f} MB/s")
    print(f"| {what} | {seconds:.2f} s | {', '.join(rate)} | {note} |", flush=True)


def bench_prepare(args):
    # imported here: the GPU machine lacks some of the data pipeline's packages
    cfg = {key: default for key, (default, _) in prepare.SPEC.items()}
    data = Path(cfg["data_root"]) / cfg["dataset"]
    if not (data / "curated" / "stats.json").exists():
        raise SystemExit(f"run `python prepare.py` first: {data}/curated is missing")
    specs = sources.resolve_sources(cfg["sources"])
    print(f"machine: {machine()}\n")
    print("| stage | time | rate | note |\n|---|---:|---:|---|")

    # 1. collect alone (reading files and JSON)
    t0 = time.perf_counter()
    items = [item for spec in specs for item in sources.iter_source(spec, lambda *a: None)]
    t_collect = time.perf_counter() - t0
    raw_chars = sum(len(r) for _, _, r in items)
    row("collect (read files + JSON)", t_collect, len(items), raw_chars, "1 process")
    time_filters(items, raw_chars, cfg)
    time_curate_stage(cfg, specs, data, len(items), raw_chars)
    time_tokenizer(cfg, specs, data, args.hf)
    time_encoding(specs, data)


def time_filters(items, raw_chars, cfg):
    """Clean + quality filters over every document in one process (what each worker runs), each
    rule alone, and MinHash signatures with the LSH index."""
    t0 = time.perf_counter()
    texts = []
    for batch in curate.batched(items, 128):
        cleaned = [filters.clean(raw, doc_type, pii=True) for _, doc_type, raw in batch]
        filters.filter_batch(cleaned, [d for _, d, _ in batch], cfg)
        texts.extend(cleaned)
    t_filter = time.perf_counter() - t0
    row("clean + quality filters", t_filter, len(items), raw_chars, "1 process")

    # where the filtering time goes: each rule on its own over the same cleaned documents
    t0 = time.perf_counter()
    for _, doc_type, raw in items:
        filters.clean(raw, doc_type, pii=True)
    per_rule = {"clean (incl. PII)": time.perf_counter() - t0}
    for name in dict.fromkeys([*filters.PROSE_RULES, *filters.CODE_RULES]):
        if name == "toxicity":
            continue
        t0 = time.perf_counter()
        for text, (_, doc_type, _) in zip(texts, items):
            if name in filters.RULES[doc_type]:
                filters.RULES[doc_type][name](text, cfg)
        per_rule[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in curate.batched(texts, 128):
        filters.toxicity_scores(batch)
    per_rule["toxicity (batches of 128)"] = time.perf_counter() - t0
    sample = texts[:2000]  # one call per document is slow: time up to 2,000, scale to them all
    t0 = time.perf_counter()
    for text in sample:
        filters.toxicity_scores([text])
    per_rule["toxicity (one call per doc, extrapolated)"] = ((time.perf_counter() - t0) * len(texts)
                                                            / max(1, len(sample)))
    top = sorted(per_rule.items(), key=lambda kv: -kv[1])
    print("|  where clean + filter time goes (all documents, each rule alone) | | | "
          + ", ".join(f"{k} {v:.1f} s" for k, v in top if v >= 0.1) + " |")

    deduplicator = dedup.Deduplicator(cfg)
    t0 = time.perf_counter()
    for batch_start in range(0, len(texts), 128):
        batch = texts[batch_start:batch_start + 128]
        for i, keys in enumerate(dedup.dedup_keys(batch, cfg), batch_start):
            deduplicator.check(str(i), keys)
    row("near-dedup: MinHash signatures + LSH", time.perf_counter() - t0, len(texts),
        sum(map(len, texts)), f"{cfg['minhash_num_perm']} perms, {cfg['minhash_shingle_words']}-word "
        "shingles, 1 process (`bench.py dedup` breaks it down)")


def time_curate_stage(cfg, specs, data, n_items, raw_chars):
    """The whole curate stage as prepare.py runs it, on one worker and on every core."""
    for workers in (1, os.cpu_count()):
        bench_cfg = {**cfg, "data_root": str(data.parent / "bench"), "workers": workers}
        out = Path(bench_cfg["data_root"]) / cfg["dataset"]
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        curate.curate(bench_cfg, specs, out)
        row("curate stage (collect+clean+filter+dedup+shards)", time.perf_counter() - t0,
            n_items, raw_chars, f"workers={workers}")


def time_tokenizer(cfg, specs, data, hf):
    """BPE training on prepare.py's tokenizer sample: pre-split and count, then the merges; with
    hf, HF tokenizers' trainer on the same sample."""
    stats = json.loads((data / "curated" / "stats.json").read_text())
    sample = list(prepare.tokenizer_sample(cfg, specs, data / "curated", stats))
    sample_chars = sum(map(len, sample))
    workers = os.cpu_count()
    t0 = time.perf_counter()
    chunks = count_chunks_parallel(sample, cfg["tokenizer_pattern"], workers)
    t_split = time.perf_counter() - t0
    tokens = train_bpe(chunks, cfg["vocab_size"])
    t_merge = time.perf_counter() - t0 - t_split
    ours = t_split + t_merge
    row("BPE: regex pre-split + count", t_split, None, sample_chars,
        f"{len(chunks):,} unique chunks, workers={workers}")
    row(f"BPE: {len(tokens) - 256:,} merges", t_merge, None, None, "vocab "
        f"{cfg['vocab_size']:,}")
    row("BPE training, ours in total", ours, None, sample_chars)
    if hf:
        from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(cfg["tokenizer_pattern"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=cfg["vocab_size"], special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        t0 = time.perf_counter()
        hf.train_from_iterator(sample, trainer)
        t_hf = time.perf_counter() - t0
        row("BPE training, HF tokenizers (Rust)", t_hf, None, sample_chars,
            f"vocab {hf.get_vocab_size():,}; ours/HF = {ours / t_hf:.1f}x")


def time_encoding(specs, data):
    """Encoding the curated corpus with the trained tokenizer (tiktoken), one thread and all."""
    tok = Tokenizer.load(data / "tokenizer.json")
    corpus = [d["text"] for spec in specs for d in curate.iter_curated(data / "curated", spec["name"])]
    corpus_bytes = sum(len(t.encode("utf-8")) for t in corpus)
    for threads in (1, os.cpu_count()):
        t0 = time.perf_counter()
        n_tokens = sum(map(len, tok.encode_batch(corpus, threads)))
        dt = time.perf_counter() - t0
        print(f"| tiktoken encode, {threads} thread(s) | {dt:.2f} s | {corpus_bytes / dt / 1e6:.1f} MB/s"
              f" | {n_tokens:,} tokens, {corpus_bytes / n_tokens:.2f} bytes/token |", flush=True)


# Machine-written text of the kinds that made a cleaning pattern quadratic (a match retried at
# every position of a long run, rescanning the rest each time), and deep or huge documents.
WORST_CASES = {
    "a line of 1+1+1...": lambda n: "1+" * (n // 2),
    "a dotted chain a.b.c...": lambda n: "a." * (n // 2),
    "a hyphen run": lambda n: "-" * n,
    "a@a@a@...": lambda n: "a@" * (n // 2),
    "1.1.1.1... (IP-like)": lambda n: "1." * (n // 2),
    "1:1:1:... (IPv6-like)": lambda n: "1:" * (n // 2),
    "_a_a_a... (word and punctuation)": lambda n: "_a" * (n // 2),
    "one word": lambda n: "a" * n,
    "deep nesting (((...)))": lambda n: "(" * (n // 2) + ")" * (n // 2),
    "PEM BEGIN lines, no END": lambda n: "-----BEGIN RSA PRIVATE KEY-----\n" * (n // 32),
    "password = '... repeated": lambda n: "password = '" * (n // 12),
    "sk- sk- sk- ...": lambda n: "sk- " * (n // 4),
    "short lines a\\n": lambda n: "a\n" * (n // 2),
    "prose repeated to size": lambda n: ("The river crossed the old town near the market. " * (n // 49 + 1))[:n],
}


def bench_cleaning(args, size=1_000_000):
    """Clean + quality filters (what each curate worker runs) on the offline corpus's documents,
    then on one document of each worst case above, as code and as prose. A worst case far slower
    than the corpus per MB is a step that is not linear in a document's length."""
    cfg = {key: default for key, (default, _) in prepare.SPEC.items()}
    items = [item for spec in sources.resolve_sources(cfg["sources"])
             for item in sources.iter_source(spec, lambda *a: None)]
    filters.toxicity_scores(["load the classifier before timing"])
    print(f"machine: {machine()}\n\n| input | time | rate | note |\n|---|---:|---:|---|")
    t0 = time.perf_counter()
    for batch in curate.batched(items, 128):
        cleaned = [filters.clean(raw, doc_type, pii=True) for _, doc_type, raw in batch]
        filters.filter_batch(cleaned, [d for _, d, _ in batch], cfg)
    row("the offline corpus (data/demo's sources)", time.perf_counter() - t0, len(items),
        sum(len(r) for _, _, r in items), "1 process")
    for name, make in WORST_CASES.items():
        text = make(size)
        for doc_type in ("code", "prose"):
            t0 = time.perf_counter()
            cleaned = filters.clean(text.encode(), doc_type, pii=True)
            verdict = filters.filter_batch([cleaned], [doc_type], cfg)[0]
            row(f"{name}, {size / 1e6:.0f} MB as {doc_type}", time.perf_counter() - t0, chars=len(text),
                note=f"dropped by {verdict[0]}" if verdict else "kept")


def _datasketch_near_dedup(texts, cfg):
    """The reference: datasketch's MinHash (SHA-1 of each shingle string) and MinHashLSH, as
    curate.py did before dedup.py; returns the indices of the documents it drops."""
    from datasketch import MinHash, MinHashLSH
    lsh = MinHashLSH(threshold=cfg["minhash_threshold"], num_perm=cfg["minhash_num_perm"])
    n, dropped = cfg["minhash_shingle_words"], []
    for i, text in enumerate(texts):
        words = text.lower().split()
        shingles = {" ".join(words[j:j + n]) for j in range(max(1, len(words) - n + 1))}
        minhash = MinHash(num_perm=cfg["minhash_num_perm"], seed=1, scheme="affine32")
        minhash.update_batch([s.encode("utf-8") for s in shingles])
        if lsh.query(minhash):
            dropped.append(i)
        else:
            lsh.insert(i, minhash)
    return dropped


def _signature_task(args):
    texts, cfg = args
    return dedup.dedup_keys(texts, cfg)


def bench_dedup(args):
    """Near-dedup over data/demo's curated documents, where the time goes: normalising, shingle
    hashes, permutations, LSH; one process, then signatures in two worker processes with the LSH in
    the main one (as curate.py runs it); beside datasketch's own MinHash + MinHashLSH."""
    from multiprocessing import Pool

    cfg = {key: default for key, (default, _) in prepare.SPEC.items()}
    folder = Path(cfg["data_root"]) / cfg["dataset"] / "curated"
    names = sorted({p.name.rsplit("-", 1)[0] for p in folder.glob("*.jsonl.gz")})
    if not names:
        raise SystemExit(f"run `python prepare.py` first: {folder} holds no curated shards")
    texts = [doc["text"] for name in names for doc in curate.iter_curated(folder, name)]
    batches = [texts[i:i + 128] for i in range(0, len(texts), 128)]
    chars, perms, n = sum(map(len, texts)), cfg["minhash_num_perm"], cfg["minhash_shingle_words"]
    print(f"machine: {machine()}\n{len(texts):,} documents, {chars / 1e6:.1f} M characters "
          f"({', '.join(names)}), {perms} permutations, {n}-word shingles, batches of 128\n")
    print("| step | time | rate | note |\n|---|---:|---:|---|")
    t0 = time.perf_counter()
    normalised = [[dedup.normalise(t) for t in batch] for batch in batches]
    row("normalise (lower, split, join)", time.perf_counter() - t0, len(texts), chars, "1 process")
    t0 = time.perf_counter()
    for batch in normalised:
        dedup.shingle_hashes([t for t in batch if t], n)
    row("shingle hashes (prefix sums)", time.perf_counter() - t0, len(texts), chars, "1 process")
    t0 = time.perf_counter()
    rows = [dedup.signatures(batch, perms, n) for batch in normalised]
    row("signatures (shingle hashes + permutations)", time.perf_counter() - t0, len(texts), chars,
        "1 process")
    t0 = time.perf_counter()
    keys = [{"exact_key": dedup.exact_key(t), "bands": dedup.band_keys(r, *dedup.lsh_shape(
        cfg["minhash_threshold"], perms))} for batch, sig in zip(normalised, rows)
        for t, r in zip(batch, sig)]
    row("exact keys + band keys", time.perf_counter() - t0, len(texts), chars, "1 process")
    t0 = time.perf_counter()
    deduplicator = dedup.Deduplicator(cfg)
    ours = [i for i, k in enumerate(keys) if deduplicator.check(i, k)]
    row("LSH index: query + insert", time.perf_counter() - t0, len(texts), chars, "1 process")
    t0 = time.perf_counter()
    deduplicator = dedup.Deduplicator(cfg)
    for batch_start, batch in zip(range(0, len(texts), 128), batches):
        for i, k in enumerate(dedup.dedup_keys(batch, cfg), batch_start):
            deduplicator.check(i, k)
    row("**near-dedup, all steps (dedup.py)**", time.perf_counter() - t0, len(texts), chars,
        "1 process")
    with Pool(2) as pool:
        pool.map(_signature_task, [(batches[0], cfg)] * 2)  # workers started and imported first
        t0 = time.perf_counter()
        deduplicator = dedup.Deduplicator(cfg)
        for batch_start, results in zip(range(0, len(texts), 128),
                                        pool.imap(_signature_task, [(b, cfg) for b in batches])):
            for i, k in enumerate(results, batch_start):
                deduplicator.check(i, k)
        row("**near-dedup, all steps (dedup.py)**", time.perf_counter() - t0, len(texts), chars,
            "signatures in 2 worker processes, LSH in the main one")
    t0 = time.perf_counter()
    reference = _datasketch_near_dedup(texts, cfg)
    row("near-dedup with datasketch's MinHash + MinHashLSH", time.perf_counter() - t0, len(texts),
        chars, "1 process (SHA-1 per shingle)")
    print(f"\ndocuments dropped as near-duplicates: dedup.py {len(ours)}, datasketch {len(reference)}")


def bench_warc(args, pages=3000):
    """The warc source on a WARC.gz written from the offline corpus's Wikipedia summaries, each
    wrapped in a news site's boilerplate (benchmarks/warc_files.py): reading alone, each extractor
    alone, and the whole source per extractor; plus how much boilerplate each lets through."""
    import tempfile

    spec = sources.resolve_sources([dict(kind="wiki_offline")])[0]
    articles = [(doc_id, text) for doc_id, _, text in sources.iter_source(spec, lambda *a: None)
                if len(text) > 400][:pages]
    html = [warc_files.html_page(doc_id.split(":", 1)[1], text.split("\n"), lang=doc_id[:2])
            for doc_id, text in articles]
    folder = Path(tempfile.mkdtemp())
    path = folder / "bench.warc.gz"
    warc_files.write_warc(path, [warc_files.response(f"http://example.org/{i}", h.encode())
                                 for i, h in enumerate(html)])
    html_bytes = sum(len(h.encode()) for h in html)
    print(f"machine: {machine()}\n{len(html):,} pages, {html_bytes / 1e6:.1f} MB of HTML, "
          f"{path.stat().st_size / 1e6:.1f} MB gzipped WARC\n")
    print("| step | time | rate | note |\n|---|---:|---:|---|")
    t0 = time.perf_counter()
    bodies = [body for _, body in web._responses(path, lambda *a: None)]
    row("read the WARC.gz (fastwarc, HTTP parsed)", time.perf_counter() - t0, len(bodies), html_bytes)
    t0 = time.perf_counter()
    decoded = [web.decode_html(body, "utf-8")[0] for body in bodies]
    row("decode (charset from the header)", time.perf_counter() - t0, len(bodies), html_bytes)
    for extractor in web.EXTRACTORS:
        t0 = time.perf_counter()
        texts = [web.extract_text(h, extractor) for h in decoded]
        seconds = time.perf_counter() - t0
        leaked = sum(any(b in t for b in ("Cookie settings", "Ten tricks", "All rights reserved",
                                          "Weather")) for t in texts)
        kept = sum(sum(len(p) for p in a.split("\n") if p in t) for (_, a), t in zip(articles, texts))
        row(f"extract alone: {extractor}", seconds, len(texts), html_bytes,
            f"boilerplate in {100 * leaked / len(texts):.1f}% of pages; "
            f"{100 * kept / sum(len(a) for _, a in articles):.1f}% of article text kept verbatim")
    for extractor in web.EXTRACTORS:
        source = sources.resolve_sources([dict(kind="warc", paths=[str(path)], extractor=extractor)])[0]
        t0 = time.perf_counter()
        pages = list(sources.iter_source(source, lambda *a: None))
        t_collect = time.perf_counter() - t0
        documents = [web.html_document(body, meta) for _, _, body, meta in pages]
        seconds = time.perf_counter() - t0
        row(f"the warc source, all steps: {extractor}", seconds, len(documents), html_bytes,
            f"read and check (the driver's part) {t_collect:.2f} s, then decode + extract + language "
            "tag (the curate workers' part), 1 process")


def bench_ray(args):
    """The curate stage on the offline default corpus: worker processes on this machine, then Ray
    started on this machine with 1 and 2 CPUs (cluster.py's path), docs/s per worker."""
    import ray

    cfg = {key: default for key, (default, _) in prepare.SPEC.items()}
    specs = sources.resolve_sources(cfg["sources"])
    raw = sum(len(r) for spec in specs for _, _, r, *_ in sources.iter_source(spec, lambda *a: None))
    out = Path(cfg["data_root"]) / "bench_ray"
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\n\n| curate stage | time | rate | per worker |\n|---|---:|---:|---:|")
    for label, workers, address in (("worker processes", 1, ""), ("worker processes", 2, ""),
                                    ("Ray on this machine", 1, "local"),
                                    ("Ray on this machine", 2, "local")):
        if address:
            cluster.connect(address, local_cpus=workers)
        t0 = time.perf_counter()
        stats = curate.curate({**cfg, "workers": workers, "ray_address": address}, specs, out)
        seconds = time.perf_counter() - t0
        docs = sum(s["docs_in"] for s in stats.values())
        print(f"| {label}, {workers} | {seconds:.1f} s | {docs / seconds:,.0f} docs/s, "
              f"{raw / seconds / 1e6:.2f} MB/s | {docs / seconds / workers:,.0f} docs/s |", flush=True)
        if address:
            ray.shutdown()
