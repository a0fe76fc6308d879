"""prepare.py on a Ray cluster (optional; `ray_address=...`): the curate stage's per-batch work
(cleaning, quality filters, MinHash signatures and LSH band keys) and the encode stage's
tokenization run as Ray tasks, while the driver keeps what must be global and ordered.

    python prepare.py config/prepare_web_mix.py --ray_address=auto     # a running cluster
    python prepare.py --ray_address=local                              # Ray on this machine only

How the outputs stay byte-identical to a one-machine run of the same config:
- the driver reads the sources and cuts them into batches of 128 documents ("input shards"), as
  the one-machine run does; each batch is one Ray task, and the results are taken in submission
  order, whichever task finishes first;
- near-dedup stays global: tasks compute each document's signature and LSH band keys in parallel
  (pure functions of the text), and the driver checks them against one index (dedup.Deduplicator)
  in document order, exactly as the one-machine run does; the index is a dict per band, a few
  hundred bytes per kept document;
- encoding: each task tokenizes a slice of a 1,024-document batch, and the driver writes the ids in
  order.
A task whose worker dies is resubmitted by Ray (max_retries), so a killed worker's batch is redone.
Every node needs the project's requirements installed; the project's code travels with the job
(runtime_env working_dir, data/ and out/ left behind).
"""

import functools
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project: the code every worker imports


class RayUnavailable(RuntimeError):
    pass


def _token_auth_if_available():
    """Ray turns token authentication on for a cluster started where a token exists
    (~/.ray/auth_token, written by the first local ray.init), and such a cluster refuses drivers
    without RAY_AUTH_MODE=token; a driver with the token connects to clusters of either kind."""
    token = (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
             or (Path.home() / ".ray" / "auth_token").exists())
    if "RAY_AUTH_MODE" not in os.environ and token:
        os.environ["RAY_AUTH_MODE"] = "token"


def connect(address, local_cpus=None):
    """Join the cluster at address ("auto", "host:port", "ray://...") or start Ray on this machine
    ("local", with local_cpus CPUs: all by default); returns the cluster's CPU count."""
    _token_auth_if_available()
    try:
        import ray
    except ImportError:
        raise RayUnavailable("ray_address is set but Ray is not installed: pip install ray") from None
    if not ray.is_initialized():
        local = address == "local"
        ray.init(address=None if local else address, num_cpus=local_cpus if local else None,
                 log_to_driver=False,
                 include_dashboard=False if local else None,
                 runtime_env={"working_dir": str(ROOT),
                              "excludes": ["data/", "out/", ".venv/", ".git/", "notebooks/", "docs/"]})
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _encode_task(tokenizer, texts):
    return tokenizer.encode_batch(texts, 1)


@functools.lru_cache(maxsize=None)
def _remote(fn):
    import ray
    return ray.remote(max_retries=3)(fn)


def ordered_map(fn, shared, tasks):
    """[fn(shared, task) for task in tasks], each call a Ray task; shared is sent to the object store
    once. Results come back in the order of tasks."""
    import ray
    shared_ref = ray.put(shared)
    return ray.get([_remote(fn).remote(shared_ref, task) for task in tasks])


def encode_texts(tokenizer, texts, width):
    """tokenizer.encode_batch(texts) with the texts split into `width` slices, one task each."""
    size = max(1, -(-len(texts) // width))
    slices = [texts[i:i + size] for i in range(0, len(texts), size)]
    return [ids for part in ordered_map(_encode_task, tokenizer, slices) for ids in part]
