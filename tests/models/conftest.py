"""Shared helpers for the model tests: tiny random Hugging Face checkpoints and HF references.

The tests compare ferrum_ext.models (reference path on CPU, fp32) with
transformers on the same weights; they skip when transformers is missing.
"""


import pytest
import torch

TOL = 1e-4  # relative Frobenius error, fp32 (issue 7)
GEN_STEPS = 32


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: more threads only add contention on a shared 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_hf(model_cls, config, path, seed=0, **save_kw):
    """Builds model_cls(config) with random weights (fixed seed), saves it to `path`, returns it in eval mode."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # HF inits some norms to exactly 1 / biases to 0: randomise them too
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, **save_kw)
    return model


def rel_err(got, ref):
    got, ref = got.float(), ref.float()
    return ((got - ref).norm() / ref.norm()).item()


def hf_greedy(hf, prompt, steps=GEN_STEPS):
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def check_against_hf(hf, path, prompts, env=None, steps=GEN_STEPS):
    """Logits + last hidden state of prompts[0], then batched greedy generation of every prompt."""
    import ferrum_ext.models as fm

    model = fm.from_pretrained(path, torch.float32, "cpu", env=env)
    ids = torch.tensor(prompts[0])
    with torch.no_grad():
        hf_out = hf(ids[None], output_hidden_states=True)
    assert rel_err(model.logits(ids), hf_out.logits[0]) <= TOL
    assert rel_err(model.last_hidden_state(ids), hf_out.hidden_states[-1][0]) <= TOL
    got = model.generate(prompts, steps)
    for prompt, tokens in zip(prompts, got):
        assert tokens == hf_greedy(hf, prompt, steps)
    return model


def prompts_of(lengths, vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture
def hfx():
    """The helpers above, for test modules (pytest's importlib mode cannot import conftest)."""
    import types

    return types.SimpleNamespace(save_hf=save_hf, rel_err=rel_err, hf_greedy=hf_greedy,
                                 check_against_hf=check_against_hf, prompts_of=prompts_of, TOL=TOL)
