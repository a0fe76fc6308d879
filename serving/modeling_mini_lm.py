"""mini-lm's GPT for Hugging Face transformers. export.py copies this file into the folder it writes
for a checkpoint of train.py's recipe, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

computes what the project's model.py computes, with torch and transformers only (it imports
nothing of the project). The recipe's options, each against GPT-2:

- position "rotary": each head's query and key dimension pairs (i, i + head_size / 2) turned by
  position * 10000^(-2i / head_size), so attention sees how far apart two tokens are ("learned":
  a table of position vectors added to the token's, as GPT-2);
- activation "relu2": the MLP's nonlinearity is relu(x)^2 ("gelu": exact GELU);
- qk_norm: LayerNorm (no bias) on every head's queries and keys before the rotation;
- value_embeddings k: k tables of token vectors; table i is mixed into the values of layer i and of
  layer n_layer - 1 - i, as v <- a * v + b * table(token), a and b learned per layer;
- logit_softcap c: logits -> c * tanh(logits / c) (0: off);
- tied_head: the LM head is the token embedding; bias: biases in Linear and LayerNorm layers.

Attention is causal; with an attention_mask (left padding), padded keys are invisible and each
sequence's positions count from its first real token, as model.py's left-padded batches. There is
no KV cache: generate() recomputes the whole sequence (at most block_size tokens) every step.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class MiniLMConfig(PretrainedConfig):
    model_type = "mini_lm"

    def __init__(self, vocab_size=32000, block_size=1024, n_layer=10, n_head=8, n_embd=512,
                 bias=False, position="rotary", activation="relu2", qk_norm=True,
                 value_embeddings=1, logit_softcap=0.0, tied_head=True, **kwargs):
        self.vocab_size, self.block_size, self.bias = vocab_size, block_size, bias
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.position, self.activation, self.qk_norm = position, activation, qk_norm
        self.value_embeddings, self.logit_softcap, self.tied_head = value_embeddings, logit_softcap, tied_head
        # the names transformers' generation and tying read
        self.num_hidden_layers, self.hidden_size, self.max_position_embeddings = n_layer, n_embd, block_size
        kwargs.setdefault("tie_word_embeddings", tied_head)
        super().__init__(**kwargs)


def rotate(x, cos, sin):
    """x (B, H, T, head_size) with each dimension pair (x[i], x[i + head_size / 2]) turned."""
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config, mixes_values):
        super().__init__()
        head_size = config.n_embd // config.n_head
        self.n_head, self.qk_norm = config.n_head, config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm = nn.LayerNorm(head_size, eps=1e-5, bias=False)
            self.k_norm = nn.LayerNorm(head_size, eps=1e-5, bias=False)
        if mixes_values:
            self.value_mix = nn.Parameter(torch.tensor([0.5, 0.5]))

    def forward(self, x, visible, rotary, value_embedding):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if value_embedding is not None:
            ve = value_embedding.view(b, t, self.n_head, -1).transpose(1, 2)
            v = self.value_mix[0] * v + self.value_mix[1] * ve
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        last, k = config.n_layer - 1, config.value_embeddings
        self.table = layer if layer < k else last - layer if layer > last - k else None
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.attn = Attention(config, self.table is not None)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias),
                                      c_proj=nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)))
        self.relu2 = config.activation == "relu2"

    def forward(self, x, visible, rotary, values):
        x = x + self.attn(self.ln_1(x), visible, rotary, None if self.table is None else values[self.table])
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(F.relu(h).square() if self.relu2 else F.gelu(h))


class MiniLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = MiniLMConfig
    base_model_prefix = "transformer"
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd),
                       h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                       ln_f=nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias))
        if config.position == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        if config.value_embeddings:
            modules["vte"] = nn.ModuleList([nn.Embedding(config.vocab_size, config.n_embd)
                                            for _ in range(config.value_embeddings)])
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):  # from_pretrained overwrites every weight
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self):
        return self.transformer.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        """Logits of every position (and the mean next-token loss against labels, shifted inside,
        as transformers' causal LMs do). kwargs: what generate() passes and this model ignores."""
        b, t = input_ids.shape
        if t > self.config.block_size:
            raise ValueError(f"{t} tokens are more than block_size={self.config.block_size}")
        causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        if attention_mask is None:
            pos, visible = torch.arange(t, device=input_ids.device)[None], causal[None, None]
        else:  # left padding: padded keys invisible, except a padded query's own (no empty row)
            real = attention_mask.bool()
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)
            visible = (causal & (real[:, None, :] | torch.eye(t, dtype=torch.bool,
                                                               device=input_ids.device)))[:, None]
        x = self.transformer.wte(input_ids)
        rotary = None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            head_size = self.config.n_embd // self.config.n_head
            dtype = torch.promote_types(x.dtype, torch.float32)
            inv_freq = 10000.0 ** (-torch.arange(0, head_size, 2, device=x.device, dtype=dtype) / head_size)
            angles = pos.to(dtype)[..., None] * inv_freq
            rotary = angles.cos()[:, None], angles.sin()[:, None]
        values = [table(input_ids) for table in self.transformer.vte] if self.config.value_embeddings else []
        for block in self.transformer.h:
            x = block(x, visible, rotary, values)
        logits = self.lm_head(self.transformer.ln_f(x))
        if self.config.logit_softcap:
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """The whole sequence every step (no KV cache), its last block_size tokens."""
        keep = self.config.block_size
        return {"input_ids": input_ids[:, -keep:],
                "attention_mask": None if attention_mask is None else attention_mask[:, -keep:]}
