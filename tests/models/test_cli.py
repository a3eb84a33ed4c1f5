"""The demo / generate / encode commands (CPU, reference path)."""

import argparse
import sys

import pytest
import torch

import ferrum_ext.models as fm
from ferrum_ext import cli_models


def _parse(argv):
    parser = argparse.ArgumentParser()
    cli_models.add_model_commands(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(argv)


def test_demo_prints_speed_and_paths(capsys):
    pytest.importorskip("safetensors")
    args = _parse(["demo", "--batch", "3", "--max-new-tokens", "4"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "paths taken" in out and "attention:" in out and "moe:" in out


def test_demo_checkpoint_without_transformers(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    cli_models._write_random_qwen3_moe(str(tmp_path))
    model = fm.from_pretrained(str(tmp_path), torch.float32, "cpu")
    assert len(model.generate([[1, 2, 3]], 3)[0]) == 3


def test_encode_rejects_decoder_and_parses(tmp_path):
    args = _parse(["encode", "--model", str(tmp_path), "a", "b"])
    assert args.texts == ["a", "b"] and args.func is cli_models.cmd_encode
    args = _parse(["generate", "--model", "m", "--prompt", "hi", "--max-new-tokens", "3"])
    assert args.max_new_tokens == 3 and args.func is cli_models.cmd_generate
