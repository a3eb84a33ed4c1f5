"""CLI commands over ferrum_ext.models: `demo`, `generate`, `encode`.

    python -m ferrum_ext demo
    python -m ferrum_ext generate --model DIR --prompt "Hello" --max-new-tokens 32
    python -m ferrum_ext encode --model DIR "first sentence" "second sentence"

`add_model_commands(subparsers)` registers them; each sets `func` to its cmd_*.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

DEMO_CONFIG = dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", vocab_size=1024,
                   hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8,
                   num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[3],
                   max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False,
                   hidden_act="silu")


def _default_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(name: str | None, device: str) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _write_random_qwen3_moe(path: str, seed: int = 0) -> None:
    """A small random Qwen3-MoE checkpoint: via transformers when importable, else written by hand."""
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None:
        cfg = {k: v for k, v in DEMO_CONFIG.items() if k not in ("architectures", "model_type")}
        torch.manual_seed(seed)
        transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**cfg)).save_pretrained(path)
        return
    from safetensors.torch import save_file
    c, g = DEMO_CONFIG, torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return (torch.randn(shape, generator=g) * 0.02).contiguous()

    h, d, hq, hk = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    t = {"model.embed_tokens.weight": rnd(c["vocab_size"], h), "model.norm.weight": torch.ones(h),
         "lm_head.weight": rnd(c["vocab_size"], h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": torch.ones(h), p + "post_attention_layernorm.weight": torch.ones(h),
                  p + "self_attn.q_proj.weight": rnd(hq * d, h), p + "self_attn.k_proj.weight": rnd(hk * d, h),
                  p + "self_attn.v_proj.weight": rnd(hk * d, h), p + "self_attn.o_proj.weight": rnd(h, hq * d),
                  p + "self_attn.q_norm.weight": torch.ones(d), p + "self_attn.k_norm.weight": torch.ones(d)})
        if i in c["mlp_only_layers"]:
            inter = c["intermediate_size"]
            t.update({p + "mlp.gate_proj.weight": rnd(inter, h), p + "mlp.up_proj.weight": rnd(inter, h),
                      p + "mlp.down_proj.weight": rnd(h, inter)})
            continue
        inter = c["moe_intermediate_size"]
        t[p + "mlp.gate.weight"] = rnd(c["num_experts"], h)
        for e in range(c["num_experts"]):
            q = f"{p}mlp.experts.{e}."
            t.update({q + "gate_proj.weight": rnd(inter, h), q + "up_proj.weight": rnd(inter, h),
                      q + "down_proj.weight": rnd(h, inter)})
    save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(DEMO_CONFIG, f, indent=1)


def _op_sources() -> str:
    from ferrum_ext import cuda_ops_available, extension_error

    return f"extension: {'built' if cuda_ops_available() else 'not built: ' + str(extension_error())}"


def cmd_demo(args) -> int:
    import ferrum_ext.models as fm
    device = _default_device(getattr(args, "device", None))
    dtype = _dtype(getattr(args, "dtype", None), device)
    batch, new = getattr(args, "batch", 8), getattr(args, "max_new_tokens", 32)
    if device == "cpu":
        torch.set_num_threads(1)  # tiny ops: extra threads only contend
    with tempfile.TemporaryDirectory(prefix="ferrum_demo_") as path:
        print(f"[demo] writing a random Qwen3-MoE checkpoint (seed 0) to {path} ...", file=sys.stderr)
        _write_random_qwen3_moe(path)
        print(f"[demo] loading it on {device} in {dtype} ...", file=sys.stderr)
        model = fm.from_pretrained(path, dtype, device)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, DEMO_CONFIG["vocab_size"], (5 + 7 * i,), generator=g).tolist()
               for i in range(batch)]
    model.generate([prompts[0][:4]], 2)  # warm-up
    model.log.clear()
    done = [0]

    def progress(index, token):
        done[0] += 1
        if done[0] % max(1, batch * new // 8) == 0:
            print(f"[demo] {done[0]}/{batch * new} tokens", file=sys.stderr)

    t0 = time.perf_counter()
    outs = model.generate(prompts, new, callback=progress)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = sum(len(o) for o in outs)
    print(f"generated {n} tokens for {batch} prompts (lengths {[len(p) for p in prompts]}) in {dt:.2f} s: "
          f"{n / dt:.1f} tokens/s on {device}")
    print(f"first sequence: {outs[0][:16]} ...")
    print(_op_sources())
    print("paths taken (op:step kind:path[backend] count):")
    print(model.log.summary())
    return 0


def _tokenizer(path: str):
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise SystemExit("the generate / encode commands need `pip install tokenizers`") from exc
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        raise SystemExit(f"no tokenizer.json in {path!r}")
    return Tokenizer.from_file(file)


def cmd_generate(args) -> int:
    import ferrum_ext.models as fm
    device = _default_device(args.device)
    tok = _tokenizer(args.model)
    print(f"loading {args.model} on {device} ...", file=sys.stderr)
    model = fm.from_pretrained(args.model, _dtype(args.dtype, device), device)
    ids = tok.encode(args.prompt).ids
    out: list[int] = []

    def stream(_, token):
        out.append(token)
        print(tok.decode(out[-1:]), end="", flush=True)

    t0 = time.perf_counter()
    tokens = model.generate([ids], args.max_new_tokens, eos_token_id=model.config.eos_token_id or None,
                            callback=stream)[0]
    dt = time.perf_counter() - t0
    print()
    print(f"[{len(tokens)} tokens in {dt:.2f} s, {len(tokens) / dt:.1f} tokens/s]", file=sys.stderr)
    return 0


def cmd_encode(args) -> int:
    import ferrum_ext.models as fm
    device = _default_device(args.device)
    tok = _tokenizer(args.model)
    tok.enable_padding(pad_id=0)
    model = fm.from_pretrained(args.model, _dtype(args.dtype, device), device)
    if not hasattr(model, "encode"):
        raise SystemExit(f"{args.model} is not an encoder (BERT) checkpoint")
    enc = tok.encode_batch(args.texts)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    emb = model.encode(ids, mask, normalize=True).cpu()
    for text, row in zip(args.texts, emb):
        print(f"{text[:40]!r:<44} [{', '.join(f'{v:+.4f}' for v in row[:6].tolist())}, ...] dim={row.numel()}")
    if len(args.texts) > 1:
        print("cosine similarity:")
        print((emb @ emb.T).numpy().round(4))
    return 0


def add_model_commands(subparsers) -> None:
    def common(p):
        p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
        p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                       help="default: bf16 on cuda, fp32 on cpu")

    p = subparsers.add_parser("demo", help="generate with a small random Qwen3-MoE; prints tokens/s and paths")
    common(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.set_defaults(func=cmd_demo)
    p = subparsers.add_parser("generate", help="greedy generation from a Hugging Face checkpoint directory")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    common(p)
    p.set_defaults(func=cmd_generate)
    p = subparsers.add_parser("encode", help="sentence embeddings from a BERT checkpoint directory")
    p.add_argument("--model", required=True)
    p.add_argument("texts", nargs="+")
    common(p)
    p.set_defaults(func=cmd_encode)
