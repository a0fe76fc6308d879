"""model.py: a decoder-only GPT with custom Triton kernels and KV-cache generation. It imports only
torch and fused_kernels (`python train.py CONFIG --params_only` prints a config's parameter breakdown).

Pre-LayerNorm transformer blocks (causal self-attention, then an MLP) and a final LayerNorm.
GPTConfig's defaults are the project's recipe: rotary positions, ReLU^2, QK-norm, zero-initialised
output projections and value embeddings, each option one change against GPT-2's recipe
(GPT2_RECIPE: learned positions, GELU, GPT-2 initialisation), from the modded-nanogpt speedrun
records; the defaults are those that measured better (docs/experiments.md, "Recipe ablation").

Kernels (fused_kernels/): LayerNorm, the attention softmax (attention="triton") and the loss run as fused
Triton kernels on CUDA and as PyTorch code elsewhere; `kernels` forces either ("triton" / "torch").
Attention: "sdpa" (PyTorch's scaled_dot_product_attention, flash/memory-efficient kernels: the
fastest measured, see BENCHMARKS.md), "triton" (explicit scores through the fused causal softmax
kernel), "eager" (plain PyTorch, the reference the others are tested against).
"""

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import fused_kernels

ATTENTION_IMPLEMENTATIONS = ("sdpa", "triton", "eager")
POSITIONS = ("learned", "rotary")
ACTIVATIONS = ("gelu", "relu2")
# GPT-2's recipe (learned positions, GELU, tied head, GPT-2 initialisation): what config/gpt2.py sets
# and what checkpoints written before the recipe options existed were trained with.
GPT2_RECIPE = dict(position="learned", activation="gelu", qk_norm=False, zero_init=False,
                   tied_head=True, value_embeddings=0, logit_softcap=0.0)


def option(default, help):
    """A GPTConfig field with its one-line help, which train.py shows in --help."""
    return field(default=default, metadata={"help": help})


@dataclass
class GPTConfig:
    """The model's shape and recipe. The defaults are the project's recipe at mini_lm's shape (what
    config/mini_lm.py trains); config/gpt2.py sets GPT2_RECIPE's values instead."""
    block_size: int = option(1024, "tokens per sequence (the longest context)")
    vocab_size: int = option(32000, "tokenizer vocabulary (train.py takes it from prepare.py's meta.json)")
    n_layer: int = option(10, "transformer blocks")
    n_head: int = option(8, "attention heads")
    n_embd: int = option(512, "model width")
    dropout: float = option(0.0, "dropout probability")
    bias: bool = option(False, "biases in Linear and LayerNorm layers")
    attention: str = option("sdpa", "'sdpa', 'triton' or 'eager'")
    kernels: str = option("auto", "'auto' (Triton on GPUs of compute capability 8.0+), 'triton' or 'torch'")
    gradient_checkpointing: bool = option(False, "recompute each block in backward: less memory, "
                                                 "one more forward")
    # the recipe: each option changes one thing against GPT-2 (GPT2_RECIPE below)
    position: str = option("rotary", "'learned' position embeddings or 'rotary' (RoPE on queries and keys)")
    activation: str = option("relu2", "the MLP's: 'gelu' or 'relu2' (ReLU squared)")
    qk_norm: bool = option(True, "LayerNorm (no bias) on each head's queries and keys")
    zero_init: bool = option(True, "attention and MLP output projections start at zero")
    tied_head: bool = option(True, "the LM head is the token embedding (False: its own, zero at start)")
    value_embeddings: int = option(1, "k tables of token vectors added to the values of the first k "
                                      "and the last k layers (2k <= n_layer; 0: none)")
    logit_softcap: float = option(0.0, "logits -> cap * tanh(logits / cap) (0: off)")

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention={self.attention!r} must be one of {ATTENTION_IMPLEMENTATIONS}")
        if self.kernels not in fused_kernels.BACKENDS:
            raise ValueError(f"kernels={self.kernels!r} must be one of {fused_kernels.BACKENDS}")
        for key, allowed in (("position", POSITIONS), ("activation", ACTIVATIONS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r} must be one of {allowed}")
        if self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"position='rotary' needs an even head size, not "
                             f"n_embd / n_head = {self.n_embd // self.n_head}")
        if not 0 <= 2 * self.value_embeddings <= self.n_layer:
            raise ValueError(f"value_embeddings={self.value_embeddings} must be between 0 and "
                             f"n_layer / 2 = {self.n_layer // 2}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap={self.logit_softcap} must be 0 (off) or positive")


# GPTConfig as a configurator spec (core/configurator.py): {key: (default, help)}, for train.py's command line
MODEL_SPEC = {f.name: (f.default, f.metadata["help"]) for f in fields(GPTConfig)}


class LayerNorm(nn.Module):
    def __init__(self, n, bias, backend):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None
        self.backend = backend

    def forward(self, x):
        return fused_kernels.layer_norm(x, self.weight, self.bias, 1e-5, self.backend)


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to block_size.
    Left uninitialised: attention reads only positions below `length`, and whoever fills them owns
    every one of them, masked padding included (masked values are still multiplied by their zero
    weight, so garbage there could be NaN, and 0 x NaN = NaN)."""

    def __init__(self, config, batch_size, device, dtype):
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions filled; advanced by GPT.forward after all layers ran

    @classmethod
    def for_model(cls, model, batch_size):
        """A cache on the model's device, in the weights' dtype, except at least fp32 on CPUs:
        bf16/fp16 attention is several times slower than fp32 there, and the cache is a small
        share of the bytes a decoding step reads."""
        weight = model.lm_head.weight
        dtype = weight.dtype
        if weight.device.type == "cpu":
            dtype = torch.promote_types(dtype, torch.float32)
        return cls(model.config, batch_size, weight.device, dtype)

    def select(self, rows):
        """Reorder or repeat the batch's rows in place: beam search gives each beam its parent's."""
        for kv in self.keys + self.values:
            kv.narrow(2, 0, self.length).copy_(kv.narrow(2, 0, self.length).index_select(0, rows))

    def update(self, layer, k, v):
        keys, values, end = self.keys[layer], self.values[layer], self.length + k.shape[2]
        keys.narrow(2, self.length, k.shape[2]).copy_(k)
        values.narrow(2, self.length, k.shape[2]).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)


def left_pad(prompts, device):
    """Token lists of different lengths as one (B, T) tensor, right-aligned (left-padded with
    token 0, which the attention masks out), and the (B,) padding length of each."""
    width = max(len(p) for p in prompts)
    idx = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts], device=device)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    return idx, pad


def rotary_angles(positions, head_size, dtype=torch.float32, base=10000.0):
    """(cos, sin) of rotary position embeddings at (B or 1, T) positions, each (B or 1, 1, T,
    head_size / 2): dimension pair i of every head turns by position * base^(-2i / head_size), so a
    query and a key meet at an angle that depends only on how far apart they are. dtype: fp32, or
    fp64 for an fp64 model."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, device=positions.device,
                                      dtype=dtype) / head_size)
    angles = positions.to(dtype)[..., None] * inv_freq
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x, cos, sin):
    """x (B, H, T, head_size) with each dimension pair (x[i], x[i + head_size / 2]) rotated."""
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def value_embedding_table(config, layer):
    """Which value-embedding table a layer adds to its values: table i in layer i and in layer
    n_layer - 1 - i (the first and last value_embeddings layers), None elsewhere."""
    k, last = config.value_embeddings, config.n_layer - 1
    return layer if layer < k else last - layer if layer > last - k else None


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        head_size = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout, self.layer = config.n_head, config.dropout, layer
        self.implementation, self.backend = config.attention, config.kernels
        self.qk_norm = config.qk_norm
        if config.qk_norm:
            self.q_norm = LayerNorm(head_size, False, config.kernels)
            self.k_norm = LayerNorm(head_size, False, config.kernels)
        if value_embedding_table(config, layer) is not None:
            self.value_mix = nn.Parameter(torch.tensor([0.5, 0.5]))  # v <- a * v + b * embedding

    def forward(self, x, cache=None, pad_lengths=None, mask=None, rotary=None, value_embedding=None):
        """mask: fused_kernels.attention_mask() for this step, or None when causality alone decides (no
        padding, and either no cache or a single new token, which may see every cached key).
        rotary: rotary_angles() of these positions, or None. value_embedding: (B, T, C) token
        vectors mixed into the values, or None."""
        b, t, c = x.shape
        qkv = self.c_attn(x).view(b, t, 3, self.n_head, c // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, n_head, t, head_size)
        if self.qk_norm:
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if value_embedding is not None:
            ve = value_embedding.to(v.dtype).view(b, t, self.n_head, -1).transpose(1, 2)
            v = self.value_mix[0].to(v.dtype) * v + self.value_mix[1].to(v.dtype) * ve
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
            q = q.to(k.dtype)  # the cache may be wider than the weights (fp32 for bf16 on CPU)
        if self.implementation == "sdpa":
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                               is_causal=mask is None and t > 1)
        else:
            scores = q @ k.transpose(-2, -1)
            scale = 1.0 / math.sqrt(k.shape[-1])
            if self.implementation == "triton":
                probs = fused_kernels.causal_softmax(scores, scale, pad_lengths, self.backend)
            else:
                if mask is None and t > 1:
                    mask = fused_kernels.attention_mask(t, k.shape[2], None, x.device)
                scores = scores * scale
                probs = torch.softmax(scores if mask is None else
                                      scores.masked_fill(~mask, float("-inf")), dim=-1)
            y = self.attn_dropout(probs) @ v
        y = y.transpose(1, 2).contiguous().view(b, t, c).to(x.dtype)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.relu2 = config.activation == "relu2"

    def forward(self, x):
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias, config.kernels)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = LayerNorm(config.n_embd, config.bias, config.kernels)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, pad_lengths=None, mask=None, rotary=None, value_embedding=None):
        x = x + self.attn(self.ln_1(x), cache, pad_lengths, mask, rotary, value_embedding)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.backend = config.kernels  # of the loss; use_kernels() may set a concrete one
        # registered in GPT-2's order (wte, wpe, drop, h, ln_f): initialisation draws from the
        # random stream in this order, so GPT-2's recipe starts from the same weights as ever
        positions = {"wpe": nn.Embedding(config.block_size, config.n_embd)
                     if config.position == "learned" else None}
        self.transformer = nn.ModuleDict({name: module for name, module in dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **positions,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, config.bias, config.kernels),
        ).items() if module is not None})
        if config.value_embeddings:
            self.transformer.vte = nn.ModuleList([nn.Embedding(config.vocab_size, config.n_embd)
                                                  for _ in range(config.value_embeddings)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tied_head:
            self.transformer.wte.weight = self.lm_head.weight  # tied: one matrix, read twice
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
                if config.zero_init:  # each block starts as the identity
                    nn.init.zeros_(p)
        if not config.tied_head:  # every token equally likely at the start
            nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def parameter_breakdown(self):
        """Parameter counts: the token embedding, the LM head (0 when it is the token embedding),
        position and value embeddings (0 when not used), transformer blocks, final LayerNorm, and
        the total (each tensor once)."""
        t, config = self.transformer, self.config
        counts = {"token embedding": t.wte.weight.numel(),
                  "LM head": 0 if config.tied_head else self.lm_head.weight.numel(),
                  "position embedding": t.wpe.weight.numel() if config.position == "learned" else 0,
                  "value embeddings": sum(p.numel() for p in t.vte.parameters())
                  if config.value_embeddings else 0,
                  "blocks": sum(p.numel() for p in t.h.parameters()),
                  "final LayerNorm": sum(p.numel() for p in t.ln_f.parameters())}
        counts["total"] = sum(counts.values())
        return counts

    def flops_per_token(self, context=None):
        """Training FLOPs per token (forward and backward), as nanoGPT and the PaLM paper count them
        for MFU: 6 per parameter that takes part in a matmul (the blocks, the final LayerNorm and
        the LM head; embeddings are lookups), plus the attention's 12 x layers x width x context."""
        counts = self.parameter_breakdown()
        context = context or self.config.block_size
        head = counts["LM head"] or counts["token embedding"]
        return (6 * (counts["blocks"] + counts["final LayerNorm"] + head)
                + 12 * self.config.n_layer * self.config.n_embd * context)

    def forward(self, idx, targets=None, cache=None, pad_lengths=None, ignore_index=-100,
                last_only=False):
        """Logits (B, T, V) of idx (B, T), and the mean loss against targets (B, T) if given.

        cache: a KVCache holding earlier positions (generation). pad_lengths: (B,) left padding of a
        batch of prompts of different lengths; positions count from each sequence's first real token.
        last_only: logits (B, 1, V) of the last position only, all generation needs (the LM head
        would otherwise be a third of a long prompt's prefill at vocabulary 32k).
        """
        b, t = idx.shape
        start = cache.length if cache is not None else 0
        if start + t > self.config.block_size:
            raise ValueError(f"sequence of {start + t} tokens is longer than block_size="
                             f"{self.config.block_size}")
        pos = torch.arange(start, start + t, device=idx.device)
        if pad_lengths is not None:
            pos = (pos[None, :] - pad_lengths[:, None]).clamp(min=0)
        x, rotary = self.transformer.wte(idx), None
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            head_size = self.config.n_embd // self.config.n_head
            rotary = rotary_angles(pos if pos.dim() == 2 else pos[None], head_size,
                                   torch.promote_types(x.dtype, torch.float32))
        x = self.transformer.drop(x)
        values = [table(idx) for table in self.transformer.vte] if self.config.value_embeddings else []
        mask = None  # built once for all layers, and only when causality alone does not decide
        if pad_lengths is not None or (start > 0 and t > 1):
            mask = fused_kernels.attention_mask(t, start + t, pad_lengths, idx.device)
        for layer, block in enumerate(self.transformer.h):
            table = value_embedding_table(self.config, layer)
            args = (x, cache, pad_lengths, mask, rotary, None if table is None else values[table])
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        if cache is not None:
            cache.length += t
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.transformer.ln_f(x))
        if self.config.logit_softcap:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = fused_kernels.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                                         ignore_index, self.backend)
        return logits, loss

    def use_kernels(self, backend):
        """Run every kernel through backend ('triton' or 'torch', as hardware.choose_kernels picked
        it for the device) instead of deciding per call; config.kernels keeps what the checkpoint
        records, so another machine decides again."""
        for module in self.modules():
            if hasattr(module, "backend"):
                module.backend = backend
        return self

    # ------------------------------------------------------------------------------- generation

    def optimize_for_decoding(self):
        """Lay out Linear weights for batch-1 decoding: fp32 on CPU column-major (MKL streams it
        faster: BENCHMARKS.md), anything else row-major (bf16 GEMV's fastest). Values and shapes
        unchanged; call after any dtype change (model.to(torch.bfloat16).optimize_for_decoding())."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                w = module.weight
                column_major = w.device.type == "cpu" and w.dtype == torch.float32
                w.data = w.data.t().contiguous().t() if column_major else w.data.contiguous()
        return self

    @torch.inference_mode()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 stop_tokens=(), seed=None, use_cache=True):
        """Continue each prompt; returns the new tokens of each (a stop token ends one, unreturned).

        prompts: a list of token lists (lengths may differ; they are left-padded and masked) or a
        (B, T) tensor. temperature 0 is greedy. top_k keeps the k likeliest tokens, top_p the
        smallest set whose probability reaches p. seed makes sampling reproducible. With use_cache
        the prompt is run once (prefill) and each step feeds one token through the KV cache; once the
        context reaches block_size, each step runs on the last block_size tokens, exactly as without
        the cache.
        """
        new_tokens = [[] for _ in range(len(prompts))]
        for new_tokens in self.generate_stream(prompts, max_new_tokens, temperature, top_k, top_p,
                                               stop_tokens, seed, use_cache):
            pass
        return new_tokens

    @torch.inference_mode()
    def generate_stream(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        stop_tokens=(), seed=None, use_cache=True):
        """generate(), yielding the lists of new tokens so far after every step (for streaming)."""
        device = self.lm_head.weight.device
        if isinstance(prompts, torch.Tensor):
            prompts = prompts.tolist()
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        idx, pad = left_pad(prompts, device)
        width = idx.shape[1]
        pad = pad if bool(pad.any()) else None
        generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        stop = torch.tensor(sorted(set(stop_tokens)), device=device, dtype=torch.long)
        new_tokens = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        block = self.config.block_size
        was_training = self.training
        self.eval()
        try:
            cache = None
            if use_cache and width < block:
                cache = KVCache.for_model(self, len(prompts))
                logits = self(idx, cache=cache, pad_lengths=pad, last_only=True)[0][:, -1]
            else:
                logits = self._last_logits(idx, pad)
            for step in range(max_new_tokens):
                token = sample(logits, temperature, top_k, top_p, generator)
                finished_now = torch.isin(token, stop) & ~done
                for i, (t, d, f) in enumerate(zip(token.tolist(), done.tolist(),
                                                  finished_now.tolist())):
                    if not d and not f:
                        new_tokens[i].append(t)
                done |= finished_now
                yield new_tokens
                if bool(done.all()) or step == max_new_tokens - 1:
                    return
                idx = torch.cat([idx, token[:, None]], dim=1)
                if cache is not None and cache.length < block:
                    logits = self.decode_step(token[:, None], cache, pad)
                else:
                    cache = None  # full: slide the window, as generation without a cache does
                    if idx.shape[1] > block:
                        cut = idx.shape[1] - block
                        idx = idx[:, cut:]
                        if pad is not None:
                            pad = (pad - cut).clamp(min=0)
                    logits = self._last_logits(idx, pad)
        finally:
            self.train(was_training)

    def decode_step(self, tokens, cache, pad_lengths=None):
        """(B, V) logits after one new token per row, (B, 1): what load_for_inference compiles."""
        return self(tokens, cache=cache, pad_lengths=pad_lengths, last_only=True)[0][:, -1]

    def _last_logits(self, idx, pad):
        return self(idx[:, -self.config.block_size:], pad_lengths=pad, last_only=True)[0][:, -1]


def sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Next token per row of (B, V) logits. temperature 0 is greedy; any temperature > 0 and top_p
    in (0, 1], however small, is numerically safe: the logits are shifted so that each row's largest
    is exactly 0 before dividing (a tiny temperature sends the others to -inf, never to NaN), and
    the likeliest token always stays a candidate, so at least one probability is positive."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    largest = logits.max(dim=-1, keepdim=True).values
    logits = torch.where(logits == largest, 0.0, (logits - largest) / temperature)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass before each token already reaches p
        drop[:, 0] = False  # rounding must never drop the likeliest token
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

