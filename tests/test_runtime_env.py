"""ferrum_ext.runtime_env: the seed's tests, every parsing quirk, warnings, snapshot, CLI table.

CPU only, no torch needed by this file.
"""

import ast
import dataclasses
import os
import sys
import warnings
from pathlib import Path

import pytest

from ferrum_ext import runtime_env
from ferrum_ext.runtime_env import (
    EXTRA_KNOWN_VARS,
    KNOBS,
    KNOWN_VARS,
    FerrumEnvWarning,
    Knob,
    Qwen3MoeRuntimeEnv,
    RuntimeConfigEntry,
    RuntimeConfigSnapshot,
    RuntimeConfigSource,
    active_runtime_snapshot,
    closest_known_var,
    format_env_table,
    install_runtime_snapshot,
    main_env,
    parse_rust_u64,
    reset_env_warnings,
)

U64_MAX = 2**64 - 1

# Every variable the seed file reads.
SEED_VARS = {
    "FERRUM_DECODE_OP_PROFILE",
    "FERRUM_FA2_DIRECT_FFI",
    "FERRUM_FA2_DIRECT_FFI_SHIM",
    "FERRUM_FA2_SOURCE",
    "FERRUM_FA_LAYOUT_VARLEN",
    "FERRUM_GREEDY_ARGMAX",
    "FERRUM_KV_CAPACITY",
    "FERRUM_MAX_BATCHED_TOKENS",
    "FERRUM_METAL_PAGED_KV",
    "FERRUM_MOE_BATCHED",
    "FERRUM_MOE_BATCHED_DECODE",
    "FERRUM_MOE_BATCH_THRESHOLD",
    "FERRUM_MOE_BUCKETED",
    "FERRUM_MOE_GRAPH",
    "FERRUM_MOE_HOST_ROUTE",
    "FERRUM_MOE_PREFILL_THRESHOLD",
    "FERRUM_MOE_PROFILE",
    "FERRUM_PAGED_MAX_SEQS",
    "FERRUM_PREFIX_CACHE",
    "FERRUM_QWEN_UNIFIED_PREFILL",
    "FERRUM_QWEN_UNIFIED_TRACE",
    "FERRUM_RBD_PROF",
    "FERRUM_UNIFIED_GREEDY_ARGMAX",
    "FERRUM_UNIFIED_LAYER_PROF",
    "FERRUM_UNIFIED_LAYER_PROF_EVERY",
    "FERRUM_UNIFIED_LAYER_PROF_MAX_M",
    "FERRUM_UNIFIED_LAYER_PROF_MIN_SEQS",
    "FERRUM_USE_VLLM_PAGED_ATTN",
    "FERRUM_VLLM_DECODE_VARLEN",
    "FERRUM_VLLM_MOE",
    "FERRUM_VLLM_VARLEN_TILED_Q4",
}


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """No FERRUM_* from the developer's shell, no installed snapshot, no warning memory."""
    for key in [key for key in os.environ if key.startswith("FERRUM_")]:
        monkeypatch.delenv(key)
    install_runtime_snapshot(None)
    reset_env_warnings()
    yield
    install_runtime_snapshot(None)
    reset_env_warnings()


def parse(pairs):
    """from_env_vars with warnings silenced (the warning tests check them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FerrumEnvWarning)
        return Qwen3MoeRuntimeEnv.from_env_vars(pairs)


def ferrum_warnings(pairs):
    """The FerrumEnvWarning messages that parsing ``pairs`` raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Qwen3MoeRuntimeEnv.from_env_vars(pairs)
    return [str(w.message) for w in caught if issubclass(w.category, FerrumEnvWarning)]


# --------------------------------------------------------------------------
# The seed's unit tests, same names and assertions
# --------------------------------------------------------------------------


def test_qwen3_moe_runtime_env_parses_m3_startup_knobs():
    env = Qwen3MoeRuntimeEnv.from_env_vars(
        [
            ("FERRUM_DECODE_OP_PROFILE", "1"),
            ("FERRUM_FA2_DIRECT_FFI_SHIM", "/tmp/shim.so"),
            ("FERRUM_FA_LAYOUT_VARLEN", "1"),
            ("FERRUM_GREEDY_ARGMAX", "1"),
            ("FERRUM_MAX_BATCHED_TOKENS", "4096"),
            ("FERRUM_METAL_PAGED_KV", "0"),
            ("FERRUM_MOE_BATCHED", "0"),
            ("FERRUM_MOE_BATCHED_DECODE", "0"),
            ("FERRUM_MOE_BATCH_THRESHOLD", "7"),
            ("FERRUM_MOE_BUCKETED", "0"),
            ("FERRUM_MOE_GRAPH", "1"),
            ("FERRUM_MOE_PREFILL_THRESHOLD", "33"),
            ("FERRUM_MOE_PROFILE", "1"),
            ("FERRUM_PAGED_MAX_SEQS", "64"),
            ("FERRUM_PREFIX_CACHE", "1"),
            ("FERRUM_QWEN_UNIFIED_PREFILL", "0"),
            ("FERRUM_QWEN_UNIFIED_TRACE", "1"),
            ("FERRUM_RBD_PROF", "1"),
            ("FERRUM_UNIFIED_GREEDY_ARGMAX", "0"),
            ("FERRUM_UNIFIED_LAYER_PROF", "1"),
            ("FERRUM_UNIFIED_LAYER_PROF_EVERY", "9"),
            ("FERRUM_UNIFIED_LAYER_PROF_MAX_M", "128"),
            ("FERRUM_UNIFIED_LAYER_PROF_MIN_SEQS", "4"),
            ("FERRUM_USE_VLLM_PAGED_ATTN", "0"),
            ("FERRUM_VLLM_DECODE_VARLEN", "1"),
            ("FERRUM_VLLM_MOE", "1"),
            ("FERRUM_VLLM_VARLEN_TILED_Q4", "1"),
        ]
    )

    assert env.decode_op_profile
    assert env.fa2_direct_ffi
    assert env.fa_layout_varlen
    assert env.greedy_argmax
    assert env.initial_scratch_tokens == 4096
    assert not env.metal_paged_kv_enabled(True)
    assert not env.moe_batched_enabled
    assert not env.moe_batched_decode_enabled
    assert env.moe_batch_threshold == 7
    assert not env.moe_bucketed
    assert env.moe_graph_requested
    assert env.moe_graph_vllm_clean
    assert env.moe_prefill_threshold == 33
    assert env.moe_profile
    assert env.paged_max_seqs == 64
    assert env.prefix_cache
    assert not env.qwen_unified_prefill
    assert env.qwen_unified_trace
    assert env.rbd_prof
    assert not env.unified_greedy_argmax
    assert env.unified_layer_prof_selected(128, 4)
    assert not env.unified_layer_prof_selected(129, 4)
    assert not env.unified_layer_prof_selected(128, 3)
    assert env.unified_layer_prof_every == 9
    assert not env.use_vllm_paged_attn
    assert env.vllm_decode_varlen
    assert env.vllm_varlen_tiled_q4


def test_qwen3_moe_runtime_env_uses_defaults_and_bounds():
    env = Qwen3MoeRuntimeEnv.from_env_vars(
        [
            ("FERRUM_KV_CAPACITY", "4096"),
            ("FERRUM_MOE_HOST_ROUTE", "1"),
            ("FERRUM_MOE_GRAPH", "1"),
            ("FERRUM_VLLM_MOE", "1"),
        ]
    )

    assert env.initial_scratch_tokens == 2048
    assert env.kv_capacity(1024) == 1024
    assert env.kv_capacity(8192) == 4096
    assert env.metal_paged_kv_enabled(True)
    assert not env.metal_paged_kv_enabled(False)
    assert env.moe_batched_enabled
    assert env.moe_batched_decode_enabled
    assert env.moe_batch_threshold == 4
    assert env.moe_prefill_threshold == 32
    assert env.paged_max_seqs == 32
    assert not env.moe_graph_vllm_clean
    assert env.qwen_unified_prefill
    assert env.use_vllm_paged_attn
    assert not env.unified_layer_prof_selected(1, 1)


def test_qwen3_moe_runtime_env_keeps_fa2_source_distinct_from_direct_ffi():
    env = Qwen3MoeRuntimeEnv.from_env_vars([("FERRUM_FA2_SOURCE", "1")])

    assert env.fa2_source
    assert not env.fa2_direct_ffi


def test_qwen3_moe_runtime_env_can_use_typed_snapshot_without_process_env():
    snapshot = RuntimeConfigSnapshot.from_entries(
        [
            RuntimeConfigEntry("FERRUM_FA_LAYOUT_VARLEN", "1", RuntimeConfigSource.Default),
            RuntimeConfigEntry("FERRUM_FA2_SOURCE", "1", RuntimeConfigSource.Default),
            RuntimeConfigEntry("FERRUM_MAX_BATCHED_TOKENS", "3072", RuntimeConfigSource.MemoryProfile),
            RuntimeConfigEntry("FERRUM_MOE_GRAPH", "1", RuntimeConfigSource.Default),
            RuntimeConfigEntry("FERRUM_VLLM_MOE", "1", RuntimeConfigSource.Default),
        ]
    )

    env = Qwen3MoeRuntimeEnv.from_runtime_config_snapshot(snapshot)

    assert env.fa_layout_varlen
    assert not env.fa2_direct_ffi
    assert env.initial_scratch_tokens == 3072
    assert env.moe_graph_requested
    assert env.moe_graph_vllm_clean


# --------------------------------------------------------------------------
# Defaults and input shapes
# --------------------------------------------------------------------------


def test_dataclass_defaults_equal_an_empty_environment():
    assert Qwen3MoeRuntimeEnv() == Qwen3MoeRuntimeEnv.from_env_vars({})
    assert Qwen3MoeRuntimeEnv() == Qwen3MoeRuntimeEnv.from_env_vars({"PATH": "/usr/bin"})


def test_empty_environment_values():
    env = Qwen3MoeRuntimeEnv.from_env_vars([])
    assert (env.initial_scratch_tokens, env.moe_batch_threshold) == (2048, 4)
    assert (env.moe_prefill_threshold, env.paged_max_seqs) == (32, 32)
    assert env.unified_layer_prof_every == 16
    assert env.unified_layer_prof_max_m is None and env.unified_layer_prof_min_seqs is None
    assert env._kv_capacity is None and env._metal_paged_kv is None
    on = {
        "moe_batched_decode_enabled",
        "moe_batched_enabled",
        "moe_bucketed",
        "qwen_unified_prefill",
        "use_vllm_paged_attn",
    }
    for field in dataclasses.fields(env):
        if field.type == "bool":
            assert getattr(env, field.name) is (field.name in on), field.name


@pytest.mark.parametrize(
    "pairs, expected",
    [
        ([("FERRUM_GREEDY_ARGMAX", "1"), ("FERRUM_GREEDY_ARGMAX", "0")], False),
        ([("FERRUM_GREEDY_ARGMAX", "0"), ("FERRUM_GREEDY_ARGMAX", "1")], True),
    ],
)
def test_later_duplicate_key_wins(pairs, expected):
    assert parse(pairs).greedy_argmax is expected
    entries = [RuntimeConfigEntry(key, value) for key, value in pairs]
    snapshot = RuntimeConfigSnapshot.from_entries(entries)
    assert Qwen3MoeRuntimeEnv.from_runtime_config_snapshot(snapshot).greedy_argmax is expected
    assert snapshot.get("FERRUM_GREEDY_ARGMAX").effective_value == pairs[-1][1]


def test_accepts_mapping_iterable_and_generator():
    pairs = [("FERRUM_PAGED_MAX_SEQS", "5")]
    assert parse(dict(pairs)) == parse(pairs) == parse(iter(pairs))
    assert parse(pairs).paged_max_seqs == 5


@pytest.mark.parametrize("pair", [("FERRUM_PAGED_MAX_SEQS", 5), (b"FERRUM_RBD_PROF", "1")])
def test_non_str_pairs_are_rejected(pair):
    with pytest.raises(TypeError, match="str"):
        Qwen3MoeRuntimeEnv.from_env_vars([pair])


def test_env_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Qwen3MoeRuntimeEnv().greedy_argmax = True


# --------------------------------------------------------------------------
# Integer knobs: Rust's str::parse::<usize>() / ::<u64>(), then > 0
# --------------------------------------------------------------------------

# (text, what Rust's parse::<u64>() gives); checked against rustc.
RUST_PARSE_CASES = [
    ("4096", 4096),
    ("+5", 5),  # Rust's unsigned from_str accepts a leading '+'
    ("05", 5),
    ("0", 0),
    ("+0", 0),
    ("000", 0),
    (str(U64_MAX), U64_MAX),
    (str(U64_MAX + 1), None),
    ("0" * 30 + "7", 7),
    ("9" * 5000, None),
    ("+", None),
    ("++5", None),
    ("-5", None),
    ("-0", None),
    ("", None),
    (" 5", None),
    ("5 ", None),
    ("5\n", None),
    ("1_000", None),
    ("0x10", None),
    ("1e3", None),
    ("5.0", None),
    ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: int() takes it, Rust doesn't
    ("\uff15", None),  # FULLWIDTH DIGIT FIVE
    ("junk", None),
]


@pytest.mark.parametrize("text, expected", RUST_PARSE_CASES)
def test_parse_rust_u64(text, expected):
    assert parse_rust_u64(text) == expected


# (variable, field, default)
INT_KNOBS = [
    ("FERRUM_MAX_BATCHED_TOKENS", "initial_scratch_tokens", 2048),
    ("FERRUM_MOE_BATCH_THRESHOLD", "moe_batch_threshold", 4),
    ("FERRUM_MOE_PREFILL_THRESHOLD", "moe_prefill_threshold", 32),
    ("FERRUM_PAGED_MAX_SEQS", "paged_max_seqs", 32),
    ("FERRUM_UNIFIED_LAYER_PROF_EVERY", "unified_layer_prof_every", 16),
    ("FERRUM_UNIFIED_LAYER_PROF_MAX_M", "unified_layer_prof_max_m", None),
    ("FERRUM_UNIFIED_LAYER_PROF_MIN_SEQS", "unified_layer_prof_min_seqs", None),
    ("FERRUM_KV_CAPACITY", "_kv_capacity", None),
]


@pytest.mark.parametrize("variable, field, default", INT_KNOBS)
@pytest.mark.parametrize("text, rust", RUST_PARSE_CASES)
def test_positive_integer_knobs(variable, field, default, text, rust):
    valid = rust is not None and rust > 0
    messages = ferrum_warnings({variable: text})
    assert getattr(parse({variable: text}), field) == (rust if valid else default)
    assert bool(messages) is not valid
    assert all(variable in message for message in messages)


@pytest.mark.parametrize("variable, field, default", INT_KNOBS)
def test_positive_integer_knobs_unset(variable, field, default):
    assert getattr(parse({}), field) == default


# --------------------------------------------------------------------------
# Flags: presence, == "1", != "0"
# --------------------------------------------------------------------------

PRESENCE_FLAGS = [
    ("FERRUM_DECODE_OP_PROFILE", "decode_op_profile"),
    ("FERRUM_MOE_PROFILE", "moe_profile"),
    ("FERRUM_RBD_PROF", "rbd_prof"),
]
EQ1_FLAGS = [
    ("FERRUM_FA_LAYOUT_VARLEN", "fa_layout_varlen"),
    ("FERRUM_GREEDY_ARGMAX", "greedy_argmax"),
    ("FERRUM_MOE_GRAPH", "moe_graph_requested"),
    ("FERRUM_PREFIX_CACHE", "prefix_cache"),
    ("FERRUM_QWEN_UNIFIED_TRACE", "qwen_unified_trace"),
    ("FERRUM_VLLM_DECODE_VARLEN", "vllm_decode_varlen"),
    ("FERRUM_VLLM_VARLEN_TILED_Q4", "vllm_varlen_tiled_q4"),
]
DEFAULT_ON_FLAGS = [
    ("FERRUM_MOE_BATCHED_DECODE", "moe_batched_decode_enabled"),
    ("FERRUM_MOE_BATCHED", "moe_batched_enabled"),
    ("FERRUM_MOE_BUCKETED", "moe_bucketed"),
    ("FERRUM_QWEN_UNIFIED_PREFILL", "qwen_unified_prefill"),
    ("FERRUM_USE_VLLM_PAGED_ATTN", "use_vllm_paged_attn"),
]
ODD_VALUES = ["", "true", "TRUE", "false", "off", "on", "yes", "2", "01", "00", " 1", " 0"]


@pytest.mark.parametrize("variable, field", PRESENCE_FLAGS)
@pytest.mark.parametrize("value", [None, "1", "0", *ODD_VALUES])
def test_presence_only_flags(variable, field, value):
    env_vars = {} if value is None else {variable: value}
    assert getattr(parse(env_vars), field) is (value is not None)


@pytest.mark.parametrize("variable, field", EQ1_FLAGS)
@pytest.mark.parametrize("value", [None, "1", "0", *ODD_VALUES])
def test_flags_on_only_for_one(variable, field, value):
    env_vars = {} if value is None else {variable: value}
    assert getattr(parse(env_vars), field) is (value == "1")


@pytest.mark.parametrize("variable, field", DEFAULT_ON_FLAGS)
@pytest.mark.parametrize("value", [None, "1", "0", *ODD_VALUES])
def test_flags_on_unless_zero(variable, field, value):
    env_vars = {} if value is None else {variable: value}
    assert getattr(parse(env_vars), field) is (value != "0")


@pytest.mark.parametrize("value", [None, "1", "0", *ODD_VALUES])
def test_unified_layer_prof_is_set_and_not_zero(value):
    env_vars = {} if value is None else {"FERRUM_UNIFIED_LAYER_PROF": value}
    assert parse(env_vars).unified_layer_prof is (value is not None and value != "0")


@pytest.mark.parametrize("value", [None, "1", "0", *ODD_VALUES])
@pytest.mark.parametrize("backend_default", [True, False])
def test_metal_paged_kv(value, backend_default):
    env_vars = {} if value is None else {"FERRUM_METAL_PAGED_KV": value}
    env = parse(env_vars)
    expected = backend_default if value is None else value != "0"
    assert env.metal_paged_kv_enabled(backend_default) is expected
    assert env._metal_paged_kv == (None if value is None else value != "0")


@pytest.mark.parametrize(
    "greedy, unified, expected",
    [
        (None, None, False),
        ("1", None, True),
        ("1", "1", True),
        ("1", "0", False),
        ("1", "false", True),
        ("0", None, False),
        ("0", "1", False),
        ("true", "1", False),
        (None, "1", False),
    ],
)
def test_unified_greedy_argmax_requires_greedy_argmax(greedy, unified, expected):
    env_vars = {"FERRUM_GREEDY_ARGMAX": greedy, "FERRUM_UNIFIED_GREEDY_ARGMAX": unified}
    env = parse({k: v for k, v in env_vars.items() if v is not None})
    assert env.unified_greedy_argmax is expected


@pytest.mark.parametrize(
    "vllm_moe, host_route, expected",
    [
        (None, None, False),
        ("1", None, True),
        ("1", "1", False),
        ("1", "0", True),
        ("1", "true", True),
        ("true", None, False),
        ("0", None, False),
        (None, "1", False),
    ],
)
def test_moe_graph_vllm_clean(vllm_moe, host_route, expected):
    env_vars = {"FERRUM_VLLM_MOE": vllm_moe, "FERRUM_MOE_HOST_ROUTE": host_route}
    env = parse({k: v for k, v in env_vars.items() if v is not None})
    assert env.moe_graph_vllm_clean is expected
    assert env.moe_graph_requested is False  # FERRUM_MOE_GRAPH is its own knob


@pytest.mark.parametrize(
    "direct, shim, expected",
    [
        *[(value, None, False) for value in ("0", "false", "FALSE", "off", "OFF")],
        *[(value, None, True) for value in ("1", "true", "TRUE", "on", "ON")],
        *[(value, None, True) for value in ("False", "no", "2", "", "Off")],
        ("0", "/tmp/shim.so", False),
        ("1", "/tmp/shim.so", True),
        (None, "/tmp/shim.so", True),
        (None, "", True),
        (None, "0", True),
        (None, None, False),
    ],
)
def test_fa2_direct_ffi_table_and_shim_fallback(direct, shim, expected):
    env_vars = {"FERRUM_FA2_DIRECT_FFI": direct, "FERRUM_FA2_DIRECT_FFI_SHIM": shim}
    env = parse({k: v for k, v in env_vars.items() if v is not None})
    assert env.fa2_direct_ffi is expected
    assert env.fa2_source is False


@pytest.mark.parametrize(
    "value, expected",
    [
        *[(value, True) for value in ("1", "true", "TRUE", "on", "ON")],
        *[(value, False) for value in ("0", "false", "off", "True", "On", "yes", "2", "")],
        (None, False),
    ],
)
def test_fa2_source_trueish(value, expected):
    env = parse({} if value is None else {"FERRUM_FA2_SOURCE": value})
    assert env.fa2_source is expected
    assert env.fa2_direct_ffi is False


@pytest.mark.parametrize(
    "max_m, min_seqs, m_total, num_seqs, expected",
    [
        (None, None, 10**6, 1, True),
        ("128", None, 128, 1, True),
        ("128", None, 129, 1, False),
        (None, "4", 1, 4, True),
        (None, "4", 1, 3, False),
        ("0", "0", 10**6, 0, True),  # 0 is dropped: no bound
        ("junk", "-1", 10**6, 0, True),
        ("+8", "+2", 8, 2, True),
    ],
)
def test_unified_layer_prof_selected(max_m, min_seqs, m_total, num_seqs, expected):
    env_vars = {
        "FERRUM_UNIFIED_LAYER_PROF": "1",
        "FERRUM_UNIFIED_LAYER_PROF_MAX_M": max_m,
        "FERRUM_UNIFIED_LAYER_PROF_MIN_SEQS": min_seqs,
    }
    env = parse({k: v for k, v in env_vars.items() if v is not None})
    assert env.unified_layer_prof_selected(m_total, num_seqs) is expected
    off = dataclasses.replace(env, unified_layer_prof=False)
    assert off.unified_layer_prof_selected(m_total, num_seqs) is False


@pytest.mark.parametrize(
    "cap, model_max, expected",
    [
        (None, 100, 100),
        (None, 512, 512),
        (None, 40960, 512),
        ("4096", 1024, 1024),
        ("4096", 8192, 4096),
        ("0", 40960, 512),  # 0 is dropped, back to the default
        ("junk", 100, 100),
        ("+600", 40960, 600),
    ],
)
def test_kv_capacity_default_and_clamp(cap, model_max, expected):
    env = parse({} if cap is None else {"FERRUM_KV_CAPACITY": cap})
    assert env.kv_capacity(model_max) == expected


# --------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------


def test_valid_input_does_not_warn():
    valid = {name: "1" for name in SEED_VARS}
    valid.update(
        {
            "FERRUM_FA2_DIRECT_FFI_SHIM": "/tmp/shim.so",
            "FERRUM_KV_MAX_BLOCKS": "100",
            "FERRUM_EXT_SKIP_CUDA": "1",
            "PATH": "/usr/bin",
            "NOT_FERRUM": "x",
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Qwen3MoeRuntimeEnv.from_env_vars(valid)
        Qwen3MoeRuntimeEnv.from_env_vars(
            {
                name: "0"
                for name in SEED_VARS
                - {
                    "FERRUM_DECODE_OP_PROFILE",
                    "FERRUM_MOE_PROFILE",
                    "FERRUM_RBD_PROF",
                    "FERRUM_FA2_DIRECT_FFI_SHIM",
                    *(variable for variable, _, _ in INT_KNOBS),
                }
            }
        )


@pytest.mark.parametrize(
    "variable, value, match",
    [
        ("FERRUM_GREEDY_ARGMAX", "true", 'only "1" turns it on'),
        ("FERRUM_VLLM_MOE", "yes", 'only "1" turns it on'),
        ("FERRUM_MOE_HOST_ROUTE", "on", 'only "1" turns it on'),
        ("FERRUM_MOE_BUCKETED", "false", 'only "0" turns it off'),
        ("FERRUM_UNIFIED_LAYER_PROF", "off", 'only "0" turns it off'),
        ("FERRUM_METAL_PAGED_KV", "false", 'only "0" turns it off'),
        ("FERRUM_RBD_PROF", "0", "unset the variable"),
        ("FERRUM_MOE_PROFILE", "false", "unset the variable"),
        ("FERRUM_FA2_SOURCE", "True", "read as off"),
        ("FERRUM_FA2_DIRECT_FFI", "False", "read as on"),
        ("FERRUM_FA2_DIRECT_FFI_SHIM", "0", "presence"),
        ("FERRUM_PAGED_MAX_SEQS", "0", "positive integer; using the default 32"),
        ("FERRUM_KV_CAPACITY", "4k", "positive integer; treated as unset"),
        ("FERRUM_UNIFIED_LAYER_PROF_EVERY", "-1", "using the default 16"),
    ],
)
def test_ignored_values_warn_naming_the_variable(variable, value, match):
    expected = parse({variable: value})
    reset_env_warnings()
    with pytest.warns(FerrumEnvWarning, match=match) as record:
        env = Qwen3MoeRuntimeEnv.from_env_vars({variable: value})
    assert any(variable in str(w.message) for w in record)
    assert env == expected  # a warning never changes the parsed result


def test_unified_greedy_without_greedy_warns():
    with pytest.warns(FerrumEnvWarning, match="FERRUM_UNIFIED_GREEDY_ARGMAX.*FERRUM_GREEDY_ARGMAX"):
        Qwen3MoeRuntimeEnv.from_env_vars({"FERRUM_UNIFIED_GREEDY_ARGMAX": "1"})


def test_warns_once_per_variable_and_value():
    assert len(ferrum_warnings({"FERRUM_GREEDY_ARGMAX": "true"})) == 1
    assert ferrum_warnings({"FERRUM_GREEDY_ARGMAX": "true"}) == []
    assert len(ferrum_warnings({"FERRUM_GREEDY_ARGMAX": "yes"})) == 1
    reset_env_warnings()
    assert len(ferrum_warnings({"FERRUM_GREEDY_ARGMAX": "true"})) == 1


def test_warning_points_at_the_caller():
    with pytest.warns(FerrumEnvWarning) as record:
        Qwen3MoeRuntimeEnv.from_runtime_config_snapshot(
            RuntimeConfigSnapshot.from_entries([RuntimeConfigEntry("FERRUM_PREFIX_CACHE", "y")])
        )
    assert record[0].filename == __file__


@pytest.mark.parametrize(
    "typo, known",
    [
        ("FERRUM_GREEDY_ARGMX", "FERRUM_GREEDY_ARGMAX"),
        ("FERRUM_PAGED_MAX_SEQ", "FERRUM_PAGED_MAX_SEQS"),
        ("FERRUM_MOE_BATCH_TRESHOLD", "FERRUM_MOE_BATCH_THRESHOLD"),
        ("FERRUM_KV_CAPACTIY", "FERRUM_KV_CAPACITY"),
        ("FERRUM_SKIP_CUDA", "FERRUM_EXT_SKIP_CUDA"),
        ("FERRUM_KV_MAX_BLOCK", "FERRUM_KV_MAX_BLOCKS"),
        ("FERRUM_FA2_DIRECT_FFI_SHIN", "FERRUM_FA2_DIRECT_FFI_SHIM"),
    ],
)
def test_unknown_name_warns_with_closest_known_name(typo, known):
    assert closest_known_var(typo) == known
    with pytest.warns(FerrumEnvWarning, match=f"{typo} is not .*closest known name: {known}$"):
        env = Qwen3MoeRuntimeEnv.from_env_vars({typo: "1"})
    assert env == Qwen3MoeRuntimeEnv()


def test_unknown_name_warns_once_whatever_the_value():
    assert len(ferrum_warnings({"FERRUM_NOPE": "1"})) == 1
    assert ferrum_warnings({"FERRUM_NOPE": "2"}) == []


# --------------------------------------------------------------------------
# Snapshot
# --------------------------------------------------------------------------


def test_entry_forms():
    entry = RuntimeConfigEntry("FERRUM_RBD_PROF", "1", RuntimeConfigSource.Cli)
    assert (entry.key, entry.effective_value, entry.source) == (
        "FERRUM_RBD_PROF",
        "1",
        RuntimeConfigSource.Cli,
    )
    assert RuntimeConfigEntry("FERRUM_RBD_PROF", "1").source is RuntimeConfigSource.Env
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.key = "x"
    assert {"Default", "Env", "MemoryProfile", "Cli"} <= set(RuntimeConfigSource.__members__)


def test_from_entries_sorts_by_key_keeping_duplicates_in_order():
    entries = [
        RuntimeConfigEntry("FERRUM_B", "1"),
        RuntimeConfigEntry("FERRUM_A", "1"),
        RuntimeConfigEntry("FERRUM_B", "2"),
    ]
    snapshot = RuntimeConfigSnapshot.from_entries(iter(entries))
    assert isinstance(snapshot.entries, tuple)
    assert [(e.key, e.effective_value) for e in snapshot.entries] == [
        ("FERRUM_A", "1"),
        ("FERRUM_B", "1"),
        ("FERRUM_B", "2"),
    ]
    assert snapshot.get("FERRUM_B").effective_value == "2"
    assert snapshot.get("FERRUM_C") is None


def test_from_environ_takes_only_ferrum_vars(monkeypatch):
    snapshot = RuntimeConfigSnapshot.from_environ(
        {"FERRUM_RBD_PROF": "1", "PATH": "/bin", "XFERRUM_A": "1", "FERRUM_A": ""}
    )
    assert snapshot.entries == (
        RuntimeConfigEntry("FERRUM_A", "", RuntimeConfigSource.Env),
        RuntimeConfigEntry("FERRUM_RBD_PROF", "1", RuntimeConfigSource.Env),
    )
    monkeypatch.setenv("FERRUM_PAGED_MAX_SEQS", "7")
    assert RuntimeConfigSnapshot.from_environ().entries == (
        RuntimeConfigEntry("FERRUM_PAGED_MAX_SEQS", "7", RuntimeConfigSource.Env),
    )


def test_active_snapshot_reads_os_environ_until_one_is_installed(monkeypatch):
    assert active_runtime_snapshot() == RuntimeConfigSnapshot()
    monkeypatch.setenv("FERRUM_PAGED_MAX_SEQS", "7")
    assert Qwen3MoeRuntimeEnv.from_env().paged_max_seqs == 7

    installed = RuntimeConfigSnapshot.from_entries(
        [RuntimeConfigEntry("FERRUM_PAGED_MAX_SEQS", "9", RuntimeConfigSource.Cli)]
    )
    install_runtime_snapshot(installed)
    assert active_runtime_snapshot() is installed
    assert Qwen3MoeRuntimeEnv.from_env().paged_max_seqs == 9  # os.environ no longer read

    install_runtime_snapshot(None)
    assert Qwen3MoeRuntimeEnv.from_env().paged_max_seqs == 7


# --------------------------------------------------------------------------
# Knob table and CLI
# --------------------------------------------------------------------------


def test_one_knob_per_field_and_known_vars():
    assert [k.field for k in KNOBS] == [f.name for f in dataclasses.fields(Qwen3MoeRuntimeEnv)]
    assert all(isinstance(k, Knob) and k.selects for k in KNOBS)
    assert EXTRA_KNOWN_VARS == ("FERRUM_KV_MAX_BLOCKS", "FERRUM_EXT_SKIP_CUDA")
    assert len(KNOWN_VARS) == len(set(KNOWN_VARS))
    assert set(KNOWN_VARS) == SEED_VARS | set(EXTRA_KNOWN_VARS)


def test_format_env_table_lists_every_variable_with_value_and_source():
    snapshot = RuntimeConfigSnapshot.from_entries(
        [
            RuntimeConfigEntry("FERRUM_MAX_BATCHED_TOKENS", "3072", RuntimeConfigSource.MemoryProfile),
            RuntimeConfigEntry("FERRUM_MOE_HOST_ROUTE", "1", RuntimeConfigSource.Cli),
            RuntimeConfigEntry("FERRUM_PAGD_MAX_SEQS", "3"),
        ]
    )
    with pytest.warns(FerrumEnvWarning):
        table = format_env_table(snapshot=snapshot)
    lines = table.splitlines()
    for variable in KNOWN_VARS:
        assert any(line.split()[0] == variable for line in lines), variable
    for knob in KNOBS:
        assert knob.selects in table
    by_var = {line.split()[0]: line for line in lines}
    assert "3072" in by_var["FERRUM_MAX_BATCHED_TOKENS"]
    assert "memory_profile" in by_var["FERRUM_MAX_BATCHED_TOKENS"]
    assert "cli" in by_var["FERRUM_MOE_HOST_ROUTE"]
    assert "default" in by_var["FERRUM_PAGED_MAX_SEQS"]
    assert "None (default 512" in by_var["FERRUM_KV_CAPACITY"]
    assert "closest known name: FERRUM_PAGED_MAX_SEQS" in by_var["FERRUM_PAGD_MAX_SEQS"]


def test_format_env_table_shows_parsed_value_next_to_raw():
    env_vars = {"FERRUM_GREEDY_ARGMAX": "true", "FERRUM_KV_CAPACITY": "4096"}
    snapshot = RuntimeConfigSnapshot.from_environ(env_vars)
    by_var = {line.split()[0]: line for line in format_env_table(parse(env_vars), snapshot).splitlines()}
    assert by_var["FERRUM_GREEDY_ARGMAX"].split()[1:4] == ["False", "'true'", "env"]
    assert by_var["FERRUM_KV_CAPACITY"].split()[1] == "4096"


def test_main_env_prints_the_active_snapshot(capsys):
    install_runtime_snapshot(
        RuntimeConfigSnapshot.from_entries(
            [
                RuntimeConfigEntry("FERRUM_PAGED_MAX_SEQS", "64", RuntimeConfigSource.Cli),
                RuntimeConfigEntry("FERRUM_MOE_BUCKETED", "false", RuntimeConfigSource.Cli),
            ]
        )
    )
    assert main_env([]) == 0
    out, err = capsys.readouterr()
    line = next(line for line in out.splitlines() if line.startswith("FERRUM_PAGED_MAX_SEQS"))
    assert line.split()[1:4] == ["64", "'64'", "cli"]
    assert "FERRUM_MOE_BUCKETED='false'" in err


def test_module_imports_only_the_standard_library():
    tree = ast.parse(Path(runtime_env.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
