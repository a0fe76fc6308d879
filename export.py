"""export.py: a checkpoint as a Hugging Face transformers folder.

    python export.py --ckpt=out/best.pt --out=out/hf
    python -c "from transformers import AutoModelForCausalLM, AutoTokenizer; \\
               m = AutoModelForCausalLM.from_pretrained('out/hf', trust_remote_code=True); \\
               t = AutoTokenizer.from_pretrained('out/hf')"

Every folder holds config.json, model.safetensors, generation_config.json, and tokenizer.json with
tokenizer_config.json (a fast byte-level BPE tokenizer with the same ids, the same pre-tokenizing
pattern and <|endoftext|> as its end-of-text token). A checkpoint fine-tuned on a task (the
translator of `bench.py translate`, say) keeps the task's prompt template as config.json's
prompt_template: `model.config.prompt_template.format(prompt=...)` asks it as sample.py does. The
model depends on the recipe:

- GPT-2's (config/gpt2.py: learned positions, GELU, no QK-norm, no value embeddings, no soft-cap)
  is transformers' own GPT2LMHeadModel (biases off export as zeros; an untied head exports
  untied): loading needs no code of this project and no trust_remote_code.
- Any other, train.py's default among them (rotary positions, ReLU², QK-norm, value embeddings),
  has no standard transformers architecture, so the folder carries its own: modeling_mini_lm.py
  (serving/modeling_mini_lm.py, torch and transformers only, no import of this project), which
  `trust_remote_code=True` loads.

The tests check, for both, that the logits equal model.py's, that the tokenizer gives the same ids,
and that greedy generate() gives the same text. transformers is needed here and in the tests, not
to train, evaluate or serve.
"""

import json
import shutil
from pathlib import Path

import torch

from core import atomic, checkpoint
from model import GPT2_RECIPE
from core import configurator
from core.tokenizer import EOT

SPEC = {
    "ckpt": ("out/best.pt", "checkpoint to export"),
    "out": ("out/hf", "folder to write (replaced if it exists)"),
}
# the recipe options GPT-2's architecture has no counterpart for, with GPT-2's values
GPT2_ARCHITECTURE = {key: GPT2_RECIPE[key]
                     for key in ("position", "activation", "qk_norm", "value_embeddings", "logit_softcap")}


class ExportError(ValueError):
    pass


MODELING_FILE = Path(__file__).resolve().parent / "serving" / "modeling_mini_lm.py"
# the model settings modeling_mini_lm.MiniLMConfig takes (everything inference needs)
REMOTE_CODE_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "position",
                    "activation", "qk_norm", "value_embeddings", "logit_softcap", "tied_head")


def is_gpt2_architecture(config):
    """True when transformers' GPT2LMHeadModel computes this model exactly."""
    return all(getattr(config, k) == v for k, v in GPT2_ARCHITECTURE.items())


def byte_to_unicode():
    """GPT-2's table from the 256 byte values to printable characters, which byte-level BPE
    vocabularies (tokenizer.json's among them) spell their tokens with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def recover_merges(tokens):
    """The merge (left, right) that made each token after the 256 bytes. Tokens are in merge
    order, so a token's merge is the split that byte-pair encoding with the earlier tokens only
    reaches: merge its bytes, lowest rank first, until two parts are left."""
    rank = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token in tokens[256:]:
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(rank.get(a + b, len(tokens)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            if best >= rank[token]:
                raise ExportError(f"token {rank[token]} ({token!r}) is not a merge of earlier tokens")
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append(tuple(parts))
    return merges


def hf_tokenizer(tokenizer, block_size):
    """A transformers fast tokenizer that encodes text to the same ids as tokenizer."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as FastTokenizer
    from transformers import PreTrainedTokenizerFast
    spell = byte_to_unicode()

    def name(token):
        return "".join(spell[b] for b in token)

    vocab = {name(t): i for i, t in enumerate(tokenizer.tokens)}
    merges = [(name(a), name(b)) for a, b in recover_merges(tokenizer.tokens)]
    fast = FastTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    # the same two steps as core/tokenizer.py: split text with the pattern, then BPE on the bytes
    fast.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    fast.decoder = decoders.ByteLevel()
    for text, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1]):
        fast.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        if fast.token_to_id(text) != i:
            raise ExportError(f"special token {text!r} got id {fast.token_to_id(text)}, not {i}")
    # split_special_tokens: the text "<|endoftext|>" inside a document is plain text, as in
    # tokenizer.encode (prepare.py puts the end-of-text id between documents, never in them)
    return PreTrainedTokenizerFast(tokenizer_object=fast, eos_token=EOT, bos_token=EOT,
                                   unk_token=None, model_max_length=block_size,
                                   clean_up_tokenization_spaces=False, split_special_tokens=True)


def hf_state_dict(state, n_layer, bias):
    """model.py's weights under GPT2LMHeadModel's names. GPT-2's projections are Conv1D layers,
    which store (in, out): the transpose of a Linear's weight. Missing biases are zeros."""
    out = {"transformer.wte.weight": state["transformer.wte.weight"],
           "transformer.wpe.weight": state["transformer.wpe.weight"],
           "lm_head.weight": state["lm_head.weight"]}
    layer_norms = [f"transformer.h.{i}.{ln}" for i in range(n_layer) for ln in ("ln_1", "ln_2")]
    for ln in layer_norms + ["transformer.ln_f"]:
        out[f"{ln}.weight"] = state[f"{ln}.weight"]
        out[f"{ln}.bias"] = state[f"{ln}.bias"] if bias else torch.zeros_like(state[f"{ln}.weight"])
    for i in range(n_layer):
        for proj in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            weight = state[f"transformer.h.{i}.{proj}.weight"]
            out[f"transformer.h.{i}.{proj}.weight"] = weight.t().contiguous()
            out[f"transformer.h.{i}.{proj}.bias"] = (state[f"transformer.h.{i}.{proj}.bias"] if bias
                                                     else torch.zeros(weight.shape[0], dtype=weight.dtype))
    return out


def write_gpt2(model, tokenizer, folder, extra):
    """model as transformers' GPT2LMHeadModel, saved into folder (extra: more config.json keys)."""
    from transformers import GPT2Config, GPT2LMHeadModel  # optional (requirements-extra.txt)
    c = model.config
    config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, n_inner=4 * c.n_embd,
        activation_function="gelu",  # exact GELU, as F.gelu in model.py (GPT-2's own is tanh's)
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id, tie_word_embeddings=c.tied_head,
        **extra)
    hf_model = GPT2LMHeadModel(config)
    missing, unexpected = hf_model.load_state_dict(
        hf_state_dict(model.state_dict(), c.n_layer, c.bias), strict=False)
    if unexpected or [k for k in missing if not k.endswith("attn.bias")]:
        raise ExportError(f"weights do not line up with GPT2LMHeadModel: missing {missing}, "
                          f"unexpected {unexpected}")
    hf_model.generation_config.pad_token_id = tokenizer.eot_id
    hf_model.save_pretrained(folder)


def write_remote_code(model, tokenizer, folder, extra):
    """model for modeling_mini_lm.py, saved into folder with that file: its weights under model.py's
    own names (the tied LM head once, as the token embedding), its config.json with auto_map (and
    extra's keys)."""
    from safetensors.torch import save_file  # comes with transformers (requirements-extra.txt)
    c, eot = model.config, tokenizer.eot_id
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if c.tied_head:
        del state["lm_head.weight"]  # the same tensor as transformer.wte.weight
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["MiniLMForCausalLM"], "model_type": "mini_lm",
              "auto_map": {"AutoConfig": "modeling_mini_lm.MiniLMConfig",
                           "AutoModelForCausalLM": "modeling_mini_lm.MiniLMForCausalLM"},
              **{k: getattr(c, k) for k in REMOTE_CODE_KEYS},
              "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, **extra}
    atomic.write_text(folder / "config.json", json.dumps(config, indent=2))
    atomic.write_text(folder / "generation_config.json", json.dumps(
        {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}, indent=2))
    shutil.copy(MODELING_FILE, folder / MODELING_FILE.name)


def export(cfg):
    try:  # an optional dependency (requirements-extra.txt)
        import transformers  # noqa: F401
    except ImportError as e:
        raise ExportError(f"export.py needs transformers ({e}): pip install -r "
                          "requirements-extra.txt -c requirements.lock") from None
    model, tokenizer, ckpt = checkpoint.load_model(cfg["ckpt"])
    # a checkpoint fine-tuned on a task answers prompts in the task's template: the folder keeps it
    # (config.prompt_template; ask with prompt_template.format(prompt=...), as sample.py does)
    template = ckpt.get("prompt_template")
    extra = {"prompt_template": template} if template else {}
    out = Path(cfg["out"])
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out} is a file, not a folder: name a folder to write")
    tmp = out.with_name(f".{out.name}.tmp")  # written whole, then renamed into place
    shutil.rmtree(tmp, ignore_errors=True)
    gpt2 = is_gpt2_architecture(model.config)
    (write_gpt2 if gpt2 else write_remote_code)(model, tokenizer, tmp, extra)
    hf_tokenizer(tokenizer, model.config.block_size).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out, gpt2, template


def main(argv=None):
    cfg = configurator.parse_or_exit(SPEC, argv, description=__doc__, prog="export.py")
    with configurator.errors_exit(ExportError, checkpoint.CheckpointError):
        out, gpt2, template = export(cfg)
    trust = "" if gpt2 else ", trust_remote_code=True"
    print(f"wrote {out} ({'GPT2LMHeadModel' if gpt2 else 'modeling_mini_lm.py, for this recipe'}): "
          f"load it with AutoModelForCausalLM.from_pretrained({str(out)!r}{trust}) and "
          f"AutoTokenizer.from_pretrained({str(out)!r})" + (
              "; it was fine-tuned on a task: ask it in config.prompt_template "
              f"({template!r}.format(prompt=...)) and stop at eos_token_id" if template else ""))
    return out


if __name__ == "__main__":
    main()
