"""The compiled CPU decoding step (inference.compile_for_cpu_decoding): the eager path's greedy
tokens with and without left padding, each compiled model with its own weights, and int8."""

import torch

from fused_kernels import int8
from model import GPT, GPTConfig, KVCache
from core import inference


def random_model(seed):
    """A tiny model whose greedy continuations vary (large random matrices), in eval mode."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=96, n_layer=2, n_head=2, n_embd=32, block_size=64)).eval()
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.5)
    return model.optimize_for_decoding()


def compiled(model):
    model.decode_step = inference.compile_for_cpu_decoding(model.decode_step)
    return model


def test_compiled_decoding_gives_the_eager_greedy_tokens_with_and_without_padding():
    model = random_model(0)
    padded = [[5, 17, 3, 44, 9, 12], [81], [2, 60, 33]]  # left-padded into one batch
    single = [[7, 7, 21]]
    eager = model.generate(padded, 30, temperature=0), model.generate(single, 30, temperature=0)
    assert len({tuple(t) for t in eager[0]}) == 3  # the three rows differ: a mix-up would show
    compiled(model)
    assert (model.generate(padded, 30, temperature=0), model.generate(single, 30, temperature=0)) \
        == eager


def test_each_compiled_model_decodes_with_its_own_weights():
    """The compiled code holds a model's weights as constants: a second model of the same shape
    must get code of its own, not the first one's (it did when dynamo's module guards were off)."""
    first, second = random_model(1), random_model(2)
    expected = [m.generate([[1, 2, 3]], 12, temperature=0) for m in (first, second)]
    assert expected[0] != expected[1]
    assert [compiled(m).generate([[1, 2, 3]], 12, temperature=0) for m in (first, second)] == expected


def test_compiled_int8_decoding_gives_the_eager_int8_logits():
    model = int8.quantize(random_model(3).to(torch.bfloat16))
    with torch.inference_mode():
        logits = {}
        for name in ("eager", "compiled"):
            if name == "compiled":
                compiled(model)
            cache = KVCache.for_model(model, 1)
            model(torch.tensor([[4, 8, 15, 16]]), cache=cache)
            logits[name] = torch.stack([model.decode_step(torch.tensor([[t]]), cache).float()
                                        for t in (23, 42, 4, 8)])
    scale = logits["eager"].abs().max()
    assert (logits["compiled"] - logits["eager"]).abs().max() <= 0.02 * scale
