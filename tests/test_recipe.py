"""The recipe options of model.GPTConfig, each alone and all together: forward and backward against
an independent plain-PyTorch reference, every attention path and kernel backend, padding and the KV
cache (rotary positions included), torch.compile without graph breaks."""
import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPT2_RECIPE, GPTConfig, KVCache
from test_model import assert_same_forward_backward, attention_case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernels run
TINY = dict(block_size=16, vocab_size=61, n_layer=4, n_head=2, n_embd=16, dropout=0.0,
            bias=True, **GPT2_RECIPE)  # GPT-2's blocks: each test turns on what it checks
ALL = dict(position="rotary", activation="relu2", qk_norm=True, zero_init=True, tied_head=False,
           value_embeddings=2, logit_softcap=3.0)
OPTIONS = [{key: value} for key, value in ALL.items()] + [ALL]
IDS = [next(iter(o)) for o in OPTIONS[:-1]] + ["all"]


def model_with(options, dtype=torch.float64, **overrides):
    """A tiny model with the options and random values in every parameter (zero-initialised ones
    would hide a wrong formula behind zeros)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, **options, **overrides})).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if "ln" in name or "norm" in name else 0.3)
                    + (1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight",
                                             "norm.weight")) else 0.0))
    return model


def rotate_as_complex(x, positions):
    """Rotary embedding written as complex multiplication (pairs (x[i], x[i + half]) as numbers
    x[i] + j x[i + half], turned by e^(j * position * 10000^(-2i / head_size)))."""
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    turn = torch.polar(torch.ones(len(positions), half, dtype=torch.float64),
                       positions[:, None].double() * freqs)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def reference_logits(model, idx):
    """The model's forward pass from its parameters alone, in plain PyTorch."""
    c, t = model.config, idx.shape[1]
    hs, pos = c.n_embd // c.n_head, torch.arange(t)
    tr = model.transformer
    x = tr.wte.weight[idx]
    if c.position == "learned":
        x = x + tr.wpe.weight[pos]
    tables = [table.weight[idx] for table in tr.vte] if c.value_embeddings else []
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i, block in enumerate(tr.h):
        a = F.layer_norm(x, (c.n_embd,), block.ln_1.weight, block.ln_1.bias)
        q, k, v = F.linear(a, block.attn.c_attn.weight, block.attn.c_attn.bias).split(c.n_embd, -1)
        q, k, v = (z.view(*idx.shape, c.n_head, hs).transpose(1, 2) for z in (q, k, v))
        if c.qk_norm:
            q = F.layer_norm(q, (hs,), block.attn.q_norm.weight)
            k = F.layer_norm(k, (hs,), block.attn.k_norm.weight)
        if c.position == "rotary":
            q, k = rotate_as_complex(q, pos), rotate_as_complex(k, pos)
        table = i if i < c.value_embeddings else c.n_layer - 1 - i
        if c.value_embeddings and (i < c.value_embeddings or i >= c.n_layer - c.value_embeddings):
            ve = tables[table].view(*idx.shape, c.n_head, hs).transpose(1, 2)
            v = block.attn.value_mix[0] * v + block.attn.value_mix[1] * ve
        scores = (q @ k.transpose(-2, -1) / math.sqrt(hs)).masked_fill(~causal, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(y, block.attn.c_proj.weight, block.attn.c_proj.bias)
        m = F.layer_norm(x, (c.n_embd,), block.ln_2.weight, block.ln_2.bias)
        h = F.linear(m, block.mlp.c_fc.weight, block.mlp.c_fc.bias)
        h = F.relu(h) ** 2 if c.activation == "relu2" else F.gelu(h)
        x = x + F.linear(h, block.mlp.c_proj.weight, block.mlp.c_proj.bias)
    x = F.layer_norm(x, (c.n_embd,), tr.ln_f.weight, tr.ln_f.bias)
    logits = F.linear(x, model.lm_head.weight)
    if c.logit_softcap:
        logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)
    return logits


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_forward_and_backward_equal_the_reference(options, attention):
    model = model_with(options, attention=attention)
    idx = torch.randint(0, 61, (3, 16))
    targets = torch.randint(0, 61, (3, 16))
    logits, loss = model(idx, targets)
    expected = reference_logits(model, idx)
    torch.testing.assert_close(logits, expected, atol=1e-10, rtol=1e-10)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected_loss = F.cross_entropy(expected.view(-1, 61), targets.view(-1))
    expected_grads = torch.autograd.grad(expected_loss, list(model.parameters()))
    for (name, _), g, g_ref in zip(model.named_parameters(), grads, expected_grads):
        torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("options", [ALL, {"qk_norm": True}], ids=["all", "qk_norm"])
def test_triton_kernels_with_the_options(options):
    """QK-norm through the LayerNorm kernel, rotary scores through the softmax kernel, soft-capped
    logits through the fused cross-entropy: logits and gradients equal the PyTorch path."""
    reference = model_with(options, torch.float32, attention="eager", kernels="torch").to(DEVICE)
    model = model_with(options, torch.float32, attention="triton", kernels="triton").to(DEVICE)
    assert_same_forward_backward(model, reference, torch.randint(0, 61, (2, 16), device=DEVICE),
                                 torch.randint(0, 61, (2, 16), device=DEVICE))


def test_zero_initialisation_and_untied_head():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "zero_init": True, "tied_head": False}))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.all(model.lm_head.weight == 0)
    for block in model.transformer.h:
        assert torch.all(block.attn.c_proj.weight == 0) and torch.all(block.mlp.c_proj.weight == 0)
    logits, loss = model(torch.randint(0, 61, (1, 8)), torch.randint(0, 61, (1, 8)))
    assert torch.all(logits == 0) and loss.item() == pytest.approx(math.log(61))
    counts = model.parameter_breakdown()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["LM head"] == counts["token embedding"] == 61 * 16


def test_parameter_counts_and_flops_with_every_option():
    model = model_with(ALL)
    counts = model.parameter_breakdown()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["position embedding"] == 0 and counts["value embeddings"] == 2 * 61 * 16
    c = model.config
    matmul = counts["blocks"] + counts["final LayerNorm"] + counts["LM head"]
    assert model.flops_per_token() == 6 * matmul + 12 * c.n_layer * c.n_embd * c.block_size


@pytest.mark.parametrize("attention", ["sdpa", "eager", "triton"])
def test_padding_and_kv_cache_with_every_option(attention):
    """Rotary positions count from each prompt's first real token: a left-padded batch gives each
    prompt's own logits, and cached decoding equals uncached, greedy and sampled."""
    settings, dtype, device, tolerance = attention_case(attention)
    model = model_with(ALL, dtype, **settings).to(device).eval()
    prompts = [[5, 6, 7, 8, 9], [1, 2], [3]]
    width = 5
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    logits, _ = model(idx, pad_lengths=pad)
    for i, p in enumerate(prompts):
        alone, _ = model(torch.tensor([p], device=device))
        torch.testing.assert_close(logits[i, pad[i]:], alone[0], atol=tolerance, rtol=tolerance)
    # past block_size the window slides; with the Triton kernels (interpreted on CPU, slow without
    # the cache) the cached steps up to the context's end, against PyTorch's kernels uncached
    n, reference = 14, model
    if attention == "triton":
        n, reference = 16 - width, model_with(ALL, dtype, attention="triton", kernels="torch").to(device)
    for kwargs in (dict(temperature=0), dict(temperature=1.0, seed=3)):
        cached = model.generate(prompts, n, use_cache=True, **kwargs)
        uncached = reference.generate(prompts, n, use_cache=False, **kwargs)
        assert cached == uncached
    cache = KVCache(model.config, 1, device, dtype)
    steps = [model(idx[:1, :3], cache=cache)[0]] + [model(idx[:1, t:t + 1], cache=cache)[0]
                                                    for t in range(3, 5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(idx[:1])[0], atol=tolerance,
                               rtol=tolerance)


def test_compile_fullgraph_with_every_option():
    """No graph breaks (fullgraph=True), the same logits and gradients as eager. Two layers, one
    value-embedding table: compiling on CPU costs time in proportion to the graph."""
    small = dict(ALL, n_layer=2, value_embeddings=1)
    model = model_with(small, torch.float32, attention="triton", kernels="triton").to(DEVICE)
    reference = model_with(small, torch.float32, attention="triton", kernels="torch").to(DEVICE)
    compiled = torch.compile(model, fullgraph=True)
    assert_same_forward_backward(compiled, reference, torch.randint(0, 61, (2, 16), device=DEVICE),
                                 torch.randint(0, 61, (2, 16), device=DEVICE))


def test_bad_options_are_named():
    for bad, words in ((dict(position="alibi"), "position="), (dict(activation="swish"), "activation="),
                       (dict(value_embeddings=3), "value_embeddings=3"),
                       (dict(logit_softcap=-1.0), "logit_softcap"),
                       (dict(position="rotary", n_embd=18, n_head=2), "even head size")):
        with pytest.raises(ValueError, match=words):
            GPTConfig(**{**TINY, **bad})
