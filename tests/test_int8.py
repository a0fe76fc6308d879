"""int8 weight-only quantization for CPU generation (fused_kernels/int8.py): the weights' round trip
within half a scale step, the layer against a plain dequantized product, and a checkpoint loaded
with dtype=int8 by sample.py, serve.py and eval.py, the file on disk unchanged."""

import hashlib

import pytest
import torch
from torch import nn

import eval as eval_script
import sample
import serve
from fused_kernels import int8
from model import GPT, GPTConfig
from test_train import run
from core import configurator
from core import inference


def test_weights_round_trip_within_half_a_step_of_their_rows_scale():
    torch.manual_seed(0)
    weight = torch.randn(64, 48) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different sizes
    weight[5] = 0.0  # an all-zero row keeps a finite scale
    q, scales = int8.quantize_rows(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and torch.isfinite(scales).all()
    error = (q.float() * scales[:, None] - weight).abs()
    assert (error <= scales[:, None] / 2 + 1e-7).all()
    assert (q[5] == 0).all()
    assert (q.abs().amax(dim=1)[torch.arange(64) != 5] == 127).all()  # each row uses its full range


def test_the_layer_is_the_dequantized_product_in_bf16():
    torch.manual_seed(1)
    linear = nn.Linear(96, 40, bias=False)
    layer = int8.Int8Linear(linear)
    x = torch.randn(3, 5, 96)
    dequantized = layer.weight.float() * layer.scales.float()[:, None]
    expected = x.to(torch.bfloat16).float() @ dequantized.t()
    y = layer(x)
    assert y.shape == (3, 5, 40) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="bias"):
        int8.Int8Linear(nn.Linear(4, 4, bias=True))
    # a column-major weight (optimize_for_decoding's fp32 layout) quantizes to the same layer
    linear.weight.data = linear.weight.data.t().contiguous().t()
    torch.testing.assert_close(int8.Int8Linear(linear)(x), y, rtol=0, atol=0)


def test_a_quantized_model_keeps_its_logits_close():
    torch.manual_seed(2)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=300,
                          zero_init=False)).eval()
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        exact = model(idx)[0]
        quantized = int8.quantize(model.to(torch.bfloat16))
        approx = quantized(idx)[0].float()
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert quantized.transformer.wte.weight.dtype == torch.bfloat16  # the tied embedding stays
    assert (approx - exact).abs().mean() < 0.05 * exact.abs().mean()
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() > 0.9


def test_sample_and_eval_load_a_checkpoint_as_int8_and_leave_it_as_trained(data_root, tmp_path, capsys):
    run(data_root, tmp_path / "run", "--max_iters=20", "--lr_decay_iters=20")
    ckpt = tmp_path / "run" / "last.pt"
    before = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    model, tokenizer, _ = inference.load_for_inference(ckpt, "cpu", "int8")
    assert isinstance(model.lm_head, int8.Int8Linear)
    # int8 weights are a CPU feature (refused on CUDA): every script is pinned to the CPU here
    texts = sample.main([f"--ckpt={ckpt}", "--device=cpu", "--dtype=int8", "--start=The ", "--temperature=0",
                         "--num_samples=1", "--max_new_tokens=8"])
    expected = tokenizer.decode(model.generate([tokenizer.encode("The ")], 8, temperature=0,
                                               stop_tokens=[tokenizer.eot_id])[0])
    assert texts == [expected]
    serve_cfg = configurator.parse(serve.SPEC, [f"--ckpt={ckpt}", "--device=cpu", "--dtype=int8"])
    served, served_tokenizer, template = serve.load(serve_cfg)
    client = serve.create_app(served, served_tokenizer, serve_cfg, template).test_client()
    answer = client.post("/v1/completions", json={"prompt": "The ", "max_tokens": 8, "temperature": 0})
    assert answer.status_code == 200 and answer.get_json()["choices"][0]["text"] == expected
    exact = eval_script.main([f"--ckpt={ckpt}", "--device=cpu", f"--out_dir={tmp_path / 'e32'}", "--gen_documents=0"])
    quantized = eval_script.main([f"--ckpt={ckpt}", "--device=cpu", f"--out_dir={tmp_path / 'e8'}",
                                  "--gen_documents=0", "--dtype=int8"])
    ppl32 = exact["likelihood"]["overall"]["perplexity"]
    ppl8 = quantized["likelihood"]["overall"]["perplexity"]
    assert ppl8 != ppl32 and abs(ppl8 / ppl32 - 1) < 0.05
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == before
    with pytest.raises(ValueError, match="dtype=int8 runs on CPUs"):
        inference.load_for_inference(ckpt, "meta", "int8")
