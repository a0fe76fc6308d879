"""A fine-tuning task's pairs and the one prompt template they are rendered in.

The template, written once here and used by prepare.py to write a task's data and by whatever
prompts a fine-tuned model (sample.py, serve.py, eval.py): a pair is the rendered prompt, then the
response, then the end-of-text token. The prompt's tokens are context only (loss mask 0); the
response's and the end-of-text token are what the model learns (mask 1), so it learns to answer and
to stop. The two parts are encoded apart, so the prompt's tokens are exactly those a caller sends at
inference. A task's pairs come from JSONL files (read_jsonl_pairs) or from the built-in translation
task (curation/bibles.py).
"""

import json

PROMPT_TEMPLATE = "### Prompt:\n{prompt}\n### Response:\n"


class TaskError(ValueError):
    pass


def render_prompt(prompt, template=PROMPT_TEMPLATE):
    """The text a fine-tuned model is given for prompt: it answers after it. A checkpoint fine-tuned
    on a task holds the template it learned (its "prompt_template"), which callers pass here."""
    return template.format(prompt=prompt)


def encode_pair(tokenizer, prompt, response):
    """(ids, mask) of one pair: the rendered prompt's tokens (mask 0), then the response's and the
    end-of-text token (mask 1)."""
    context = tokenizer.encode(render_prompt(prompt))
    target = tokenizer.encode(response) + [tokenizer.eot_id]
    return context + target, [0] * len(context) + [1] * len(target)


def read_jsonl_pairs(path, prompt_field="prompt", response_field="response"):
    """[(prompt, response)] of a JSONL file, one object per line holding both fields as strings."""
    pairs = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read task file {path}: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(item, dict) or not all(isinstance(item.get(f), str)
                                                 for f in (prompt_field, response_field)):
            raise TaskError(f"{path}:{number}: needs string fields {prompt_field!r} and "
                            f"{response_field!r}")
        pairs.append((item[prompt_field], item[response_field]))
    return pairs
