"""The GPT: implementations agree, padding and the KV cache change nothing, sampling behaves."""
import math
from collections import Counter
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import LAUNCHERS, triton_launches
from model import GPT, GPT2_RECIPE, GPTConfig, KVCache, sample

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernels run
TINY = dict(block_size=16, vocab_size=61, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
            bias=True, **GPT2_RECIPE)  # GPT-2's blocks: each test turns on what it checks


def tiny(dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides})).to(dtype)


def attention_case(attention, dtype=torch.float64):
    """(model settings, dtype, device, tolerance) of a test case parametrized by attention:
    "triton" runs every Triton kernel (kernels="triton": compiled on a GPU, in the interpreter on
    CPU; conftest.py checks that each such case launches one) in fp32, the precision the kernels
    compute in, with fp32's tolerance; the others run PyTorch's paths in dtype on CPU."""
    if attention == "triton":
        return dict(attention="triton", kernels="triton"), torch.float32, DEVICE, 1e-5
    return dict(attention=attention), dtype, "cpu", 1e-10 if dtype == torch.float64 else 1e-5


def clone_as(model, **overrides):
    w = model.lm_head.weight
    other = GPT(GPTConfig(**{**vars(model.config), **overrides})).to(w.device, w.dtype)
    other.load_state_dict(model.state_dict())
    return other


def assert_same_forward_backward(model, reference, idx, targets):
    """The same logits and loss, and the same gradient of every parameter, within fp32 tolerances."""
    (logits, loss), (ref_logits, ref_loss) = model(idx, targets), reference(idx, targets)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    loss.backward()
    ref_loss.backward()
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_parameter_breakdown_and_mini_lm_size():
    model = tiny()
    counts = model.parameter_breakdown()
    assert counts["total"] == sum(p.numel() for p in model.parameters())  # tied weights counted once
    assert model.transformer.wte.weight is model.lm_head.weight
    def breakdown(*configs):
        result = subprocess.run([sys.executable, "train.py", *configs, "--params_only",
                                 "--data_root=/nonexistent"], cwd=ROOT,
                                capture_output=True, text=True, check=True)
        return {line.split(":")[0].strip(): float(line.split(":")[1].strip().rstrip("M"))
                for line in result.stdout.splitlines()[1:]}
    default, gpt2 = breakdown("config/mini_lm.py"), breakdown("config/mini_lm.py", "config/gpt2.py")
    assert 45 < gpt2["total"] < 55 and gpt2["value embeddings"] == 0, gpt2  # the seed's ~50M
    assert default["blocks"] == gpt2["blocks"] and default["position embedding"] == 0
    assert default["value embeddings"] == default["token embedding"] == 16.38, default  # train.py's recipe


def test_flops_per_token_counts_matmul_parameters_and_attention():
    model = tiny()
    c = model.config
    matmul_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    assert model.flops_per_token() == 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.block_size
    assert model.flops_per_token(4) == 6 * matmul_params + 12 * c.n_layer * c.n_embd * 4


def test_gpt2_initialisation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=6, n_head=4, n_embd=256, vocab_size=1000, block_size=64, bias=True,
                          **GPT2_RECIPE))
    std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(12)) < 1e-3
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 1e-3
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_attention_implementations_agree(attention, bias):
    settings, dtype, device, tolerance = attention_case(attention)
    eager = tiny(dtype, bias=bias, attention="eager").to(device)
    model = clone_as(eager, **settings)
    idx = torch.randint(0, 61, (3, 16), device=device)
    targets = torch.randint(0, 61, (3, 16), device=device)
    ref_logits, ref_loss = eager(idx, targets)
    ref_loss.backward()
    logits, loss = model(idx, targets)
    loss.backward()
    torch.testing.assert_close(logits, ref_logits, atol=tolerance, rtol=tolerance)
    for (name, p), p_ref in zip(model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=tolerance, rtol=10 * tolerance, msg=name)


def test_the_check_on_triton_cases_sees_which_path_ran():
    """conftest.py fails a "triton" case that launches no Triton kernel: kernels='auto' on CPU
    tensors (what such cases once ran, unnoticed) launches none; kernels='triton' all three."""
    model = tiny(torch.float32, attention="triton")
    idx = torch.randint(0, 61, (2, 16))
    with triton_launches() as calls:
        model(idx, idx)
    assert calls == []
    model = clone_as(model, kernels="triton").to(DEVICE)
    with triton_launches() as calls:
        model(idx.to(DEVICE), idx.to(DEVICE))
    assert set(calls) == set(LAUNCHERS)


def test_gradient_checkpointing_gives_identical_gradients():
    """Dropout on: the recomputation must replay the same random masks."""
    plain = tiny(torch.float32, dropout=0.2)
    ckpt = clone_as(plain, gradient_checkpointing=True)
    idx = torch.randint(0, 61, (2, 16))
    targets = torch.randint(0, 61, (2, 16))
    torch.manual_seed(5)
    plain(idx, targets)[1].backward()
    torch.manual_seed(5)
    ckpt(idx, targets)[1].backward()
    for (name, p), p_ref in zip(ckpt.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=0, rtol=0, msg=name)


def test_triton_kernels_match_the_eager_model():
    """Logits and every gradient with all three Triton kernels on, against the PyTorch path."""
    eager = tiny(torch.float32, attention="eager", kernels="torch").to(DEVICE)
    model = clone_as(eager, attention="triton", kernels="triton")
    idx = torch.randint(0, 61, (2, 16), device=DEVICE)
    targets = torch.randint(0, 61, (2, 16), device=DEVICE)
    targets[0, :3] = -100
    assert_same_forward_backward(model, eager, idx, targets)


@pytest.mark.parametrize("attention", ["sdpa", "triton", "eager"])
def test_left_padding_changes_nothing_for_real_tokens(attention):
    settings, dtype, device, tolerance = attention_case(attention)
    model = tiny(dtype, **settings).to(device).eval()
    prompts = [[5, 6, 7, 8, 9], [1, 2], [3]]
    width = 5
    idx = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    logits, _ = model(idx, pad_lengths=pad)
    assert torch.isfinite(logits).all()
    for i, p in enumerate(prompts):
        alone, _ = model(torch.tensor([p], device=device))
        torch.testing.assert_close(logits[i, pad[i]:], alone[0], atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("attention", ["sdpa", "triton", "eager"])
def test_kv_cache_steps_equal_full_forward(attention):
    settings, dtype, device, tolerance = attention_case(attention)
    model = tiny(dtype, **settings).to(device).eval()
    idx = torch.randint(0, 61, (2, 12), device=device)
    full, _ = model(idx)
    cache = KVCache(model.config, 2, device, dtype)
    parts = [model(idx[:, :7], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0]
                                                   for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=tolerance, rtol=tolerance)
    assert cache.length == 12


def test_last_only_logits_equal_the_last_position_of_all():
    model = tiny().eval()
    idx = torch.randint(0, 61, (3, 9))
    pad = torch.tensor([0, 4, 8])
    full, _ = model(idx, pad_lengths=pad)
    last, _ = model(idx, pad_lengths=pad, last_only=True)
    assert last.shape == (3, 1, 61)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-12, rtol=1e-12)
    cache = KVCache(model.config, 3, "cpu", torch.float64)
    model(idx[:, :5], pad_lengths=pad, cache=cache, last_only=True)
    step, _ = model(idx[:, 5:], pad_lengths=pad, cache=cache, last_only=True)
    torch.testing.assert_close(step, full[:, -1:], atol=1e-12, rtol=1e-12)


def reference_greedy(model, prompt, n):
    """Uncached, unbatched, one prompt at a time, cropping to block_size like nanoGPT."""
    idx = torch.tensor([prompt], device=model.lm_head.weight.device)
    out = []
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        token = logits[0, -1].argmax()
        out.append(int(token))
        idx = torch.cat([idx, token.view(1, 1)], dim=1)
    return out


@pytest.mark.parametrize("attention", ["sdpa", "triton", "eager"])
def test_greedy_generation_with_cache_equals_without(attention):
    """Left-padded prompts, 20 decoding steps each, past the context (the window slides). With the
    Triton kernels (interpreted on CPU, a few seconds a step uncached) the cached steps up to the
    context's end, against the same model on PyTorch's kernels without the cache."""
    settings, dtype, device, _ = attention_case(attention)
    model = tiny(dtype, **settings).to(device).eval()
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7], [1, 8, 2, 8, 1]]
    n = 20  # runs past block_size=16: the window slides
    reference = model
    if attention == "triton":
        n, reference = 16 - len(prompts[0]), clone_as(model, kernels="torch")
    cached = model.generate(prompts, n, temperature=0)
    uncached = reference.generate(prompts, n, temperature=0, use_cache=False)
    assert cached == uncached
    assert cached == [reference_greedy(reference, p, n) for p in prompts]


class ForwardLaunches:
    """model.forward wrapped: the Triton launches of each forward, as a Counter per call."""

    def __init__(self, model, calls):
        self.forward, self.calls, self.per_forward = model.forward, calls, []

    def __call__(self, *args, **kwargs):
        before = len(self.calls)
        out = self.forward(*args, **kwargs)
        self.per_forward.append(Counter(self.calls[before:]))
        return out


def test_every_generation_step_launches_the_triton_attention_once_per_layer():
    """Left-padded prompts, cached decoding to the context's end, then three steps of the sliding
    window past it: every forward (the prefill, each decoding step, each windowed step) launches
    the Triton softmax once per layer and LayerNorm 2 n_layer + 1 times, and the tokens are those
    of the same model on PyTorch's kernels."""
    settings, dtype, device, _ = attention_case("triton")
    model = tiny(dtype, **settings).to(device).eval()
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7]]
    n = 16 - len(prompts[0]) + 3  # three tokens past block_size=16
    with triton_launches() as calls:
        model.forward = ForwardLaunches(model, calls)
        tokens = model.generate(prompts, n, temperature=0)
    per_forward = model.forward.per_forward
    layers = model.config.n_layer
    assert len(per_forward) == n  # the prefill gives the first token, each later forward one more
    assert per_forward == [Counter({"_softmax.causal_softmax": layers, "_layernorm.layer_norm": 2 * layers + 1})] * n
    assert tokens == clone_as(model, kernels="torch").generate(prompts, n, temperature=0, use_cache=False)


def test_decoding_layout_changes_no_value():
    model = tiny(torch.float32).eval()
    idx = torch.randint(0, 61, (2, 10))
    before = model(idx)[0]
    greedy = model.generate([[1, 2, 3]], 8, temperature=0)
    model.optimize_for_decoding()
    assert model.lm_head.weight.stride() == (1, 61) and model.transformer.wte.weight is model.lm_head.weight
    torch.testing.assert_close(model(idx)[0], before, atol=1e-5, rtol=1e-5)
    assert model.generate([[1, 2, 3]], 8, temperature=0) == greedy


def test_stop_tokens_end_each_sequence_on_its_own():
    model = tiny().eval()
    prompts = [[3, 1, 4], [2, 7, 1, 8]]
    free = model.generate(prompts, 12, temperature=0)
    stop = free[0][4]
    stopped = model.generate(prompts, 12, temperature=0, stop_tokens=[stop])
    assert stopped[0] == free[0][:free[0].index(stop)]
    expected_1 = free[1][:free[1].index(stop)] if stop in free[1] else free[1]
    assert stopped[1] == expected_1


def test_sampling_is_seeded_and_top_k_top_p_narrow_it():
    model = tiny().eval()
    prompts = [[1, 2, 3], [4, 5]]
    a = model.generate(prompts, 10, temperature=1.0, seed=7)
    assert a == model.generate(prompts, 10, temperature=1.0, seed=7)
    assert a != model.generate(prompts, 10, temperature=1.0, seed=8)
    greedy = model.generate(prompts, 10, temperature=0)
    assert model.generate(prompts, 10, temperature=1.0, top_k=1, seed=3) == greedy
    assert model.generate(prompts, 10, temperature=1.0, top_p=1e-9, seed=3) == greedy


def test_sample_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(sample(logits, 1.0, top_p=0.8, generator=torch.Generator().manual_seed(s)))
            for s in range(200)}
    assert seen == {0, 1}
    seen = {int(sample(logits, 1.0, top_k=3, generator=torch.Generator().manual_seed(s)))
            for s in range(200)}
    assert seen == {0, 1, 2}


def test_bad_inputs():
    model = tiny()
    with pytest.raises(ValueError, match="longer than block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([[1], []], 3)
    with pytest.raises(ValueError, match="multiple of n_head"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="attention="):
        GPTConfig(attention="flash")
    assert model.generate([[1, 2]], 0) == [[]]


def test_generate_restores_training_mode():
    model = tiny()
    model.train()
    model.generate([[1]], 2)
    assert model.training


def test_compile_on_cpu_matches_eager():
    model = tiny(torch.float32, attention="triton", kernels="torch")
    compiled = torch.compile(clone_as(model))
    assert_same_forward_backward(compiled, model, torch.randint(0, 61, (2, 16)),
                                 torch.randint(0, 61, (2, 16)))


def test_compile_fullgraph_with_triton_kernels():
    """The custom ops keep torch.compile's graph whole (fullgraph=True fails on any break)."""
    model = tiny(torch.float32, attention="triton", kernels="triton").to(DEVICE)
    reference = clone_as(model, kernels="torch")
    compiled = torch.compile(clone_as(model), fullgraph=True)
    assert_same_forward_backward(compiled, reference, torch.randint(0, 61, (2, 16), device=DEVICE),
                                 torch.randint(0, 61, (2, 16), device=DEVICE))


def test_attention_paths_agree_on_padded_batches_padding_rows_included():
    """sdpa, eager and the Triton softmax kernel follow one padding convention (fused_kernels.attention_mask):
    equal logits on every row, padding rows too, in a prefill and in a cached step."""
    eager = tiny(torch.float32, attention="eager", kernels="torch").to(DEVICE).eval()
    models = {"eager": eager, "sdpa": clone_as(eager, attention="sdpa"),
              "triton": clone_as(eager, attention="triton", kernels="triton")}
    idx = torch.randint(1, 61, (3, 9), device=DEVICE)
    pad = torch.tensor([0, 4, 8], device=DEVICE)
    outputs = {}
    for name, model in models.items():
        cache = KVCache(model.config, 3, DEVICE, torch.float32)
        prefill, _ = model(idx[:, :6], cache=cache, pad_lengths=pad)
        step, _ = model(idx[:, 6:], cache=cache, pad_lengths=pad)
        outputs[name] = torch.cat([prefill, step], dim=1)
        assert torch.isfinite(outputs[name]).all(), name
    for name in ("sdpa", "triton"):
        torch.testing.assert_close(outputs[name], outputs["eager"], atol=1e-5, rtol=1e-5, msg=name)


def test_gpt2_recipe_registers_modules_in_gpt2_order():
    """Initialisation draws from the random stream in module order: GPT-2's recipe must keep
    wte, wpe, drop, h, ln_f so that a seed gives the same starting weights as it always has."""
    names = [n for n, _ in tiny().named_children()] + [n for n, _ in tiny().transformer.named_children()]
    assert names == ["transformer", "lm_head", "wte", "wpe", "drop", "h", "ln_f"]
