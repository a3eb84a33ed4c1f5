"""FERRUM_* runtime knobs: a port of Ferrum 0.7.7's ``Qwen3MoeRuntimeEnv``.

The parsing keeps every quirk of the Rust original (see
``shared/spec/000_08e9a5bfec8db423.txt`` and DESIGN.md section 3): some flags
are on whenever the variable is set, some only for ``"1"``, some unless
``"0"``; integer knobs drop ``0`` and junk. On top of the original, a value
that is ignored or read in a surprising way raises a ``FerrumEnvWarning``
(once per variable and value), and an unknown ``FERRUM_*`` name is reported
with the closest known one. Warnings never change a parsed result.

Pure stdlib: importable without torch. ``python -m ferrum_ext env`` calls
``main_env()`` to print every knob, its effective value and its source.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "EXTRA_KNOWN_VARS",
    "KNOBS",
    "KNOWN_VARS",
    "FerrumEnvWarning",
    "Knob",
    "Qwen3MoeRuntimeEnv",
    "RuntimeConfigEntry",
    "RuntimeConfigSnapshot",
    "RuntimeConfigSource",
    "active_runtime_snapshot",
    "closest_known_var",
    "format_env_table",
    "install_runtime_snapshot",
    "main_env",
    "parse_rust_u64",
    "reset_env_warnings",
]

DEFAULT_KV_CAPACITY = 512

# Variables read by other ferrum_ext modules, not by Qwen3MoeRuntimeEnv.
EXTRA_KNOWN_VARS = ("FERRUM_KV_MAX_BLOCKS", "FERRUM_EXT_SKIP_CUDA")


class FerrumEnvWarning(UserWarning):
    """A FERRUM_* variable was ignored, read in a surprising way, or unknown."""


# --------------------------------------------------------------------------
# Typed snapshot (ferrum_types::RuntimeConfigSnapshot)
# --------------------------------------------------------------------------


class RuntimeConfigSource(enum.Enum):
    """Where an effective config value came from."""

    Default = "default"
    ConfigFile = "config_file"
    Cli = "cli"
    Env = "env"
    ScriptCase = "script_case"
    MemoryProfile = "memory_profile"


@dataclass(frozen=True)
class RuntimeConfigEntry:
    key: str
    effective_value: str
    source: RuntimeConfigSource = RuntimeConfigSource.Env


@dataclass(frozen=True)
class RuntimeConfigSnapshot:
    """FERRUM_* entries sorted by key; a later duplicate of a key wins."""

    entries: tuple[RuntimeConfigEntry, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[RuntimeConfigEntry]) -> RuntimeConfigSnapshot:
        # A stable sort keeps duplicates in order, so "later wins" survives.
        return cls(tuple(sorted(entries, key=lambda entry: entry.key)))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfigSnapshot:
        """Every FERRUM_* variable of ``environ`` (default ``os.environ``), source Env."""
        environ = os.environ if environ is None else environ
        return cls.from_entries(
            RuntimeConfigEntry(key, value, RuntimeConfigSource.Env)
            for key, value in environ.items()
            if key.startswith("FERRUM_")
        )

    def get(self, key: str) -> RuntimeConfigEntry | None:
        """The entry that wins for ``key`` (the last one), or None."""
        found = None
        for entry in self.entries:
            if entry.key == key:
                found = entry
        return found


_ACTIVE_SNAPSHOT: RuntimeConfigSnapshot | None = None


def install_runtime_snapshot(snapshot: RuntimeConfigSnapshot | None) -> None:
    """Install the process-wide snapshot; ``None`` goes back to reading os.environ."""
    global _ACTIVE_SNAPSHOT
    _ACTIVE_SNAPSHOT = snapshot


def active_runtime_snapshot() -> RuntimeConfigSnapshot:
    """The installed snapshot, else one built from os.environ right now."""
    if _ACTIVE_SNAPSHOT is not None:
        return _ACTIVE_SNAPSHOT
    return RuntimeConfigSnapshot.from_environ()


# --------------------------------------------------------------------------
# Knob table: one row per Qwen3MoeRuntimeEnv field (DESIGN.md section 3)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    field: str
    variable: str
    selects: str
    # Further variables the field reads that no other knob lists.
    also: tuple[str, ...] = ()


_TIMING = "timing with CUDA events, printed to stderr; no numerical effect"
_FA2 = (
    "mixed steps call an installed FlashAttention-2 (`flash_attn_varlen_func` with a "
    "block table); clear error at model build when it is not importable"
)
_GREEDY = "decode / mixed steps return token ids from the argmax kernel instead of logits"
_BATCHED = (
    "a decode batch of m >= threshold runs as one batched step, else one step per "
    "sequence; also the top of the MoE GEMV tier"
)
_SMALL_M = "the small-M MoE tier for threshold <= T < prefill_threshold; above it the prefill tier"
_GRAPH = (
    "capture the batched decode step in CUDA graphs keyed by batch size; a warning once "
    "when requested but not clean"
)
_SIZING = "pool and scratch sizing; a step larger than the scratch is refused with a clear error, not a crash"

KNOBS: tuple[Knob, ...] = (
    Knob("decode_op_profile", "FERRUM_DECODE_OP_PROFILE", _TIMING),
    Knob("fa2_direct_ffi", "FERRUM_FA2_DIRECT_FFI", _FA2, also=("FERRUM_FA2_DIRECT_FFI_SHIM",)),
    Knob("fa2_source", "FERRUM_FA2_SOURCE", _FA2),
    Knob(
        "fa_layout_varlen",
        "FERRUM_FA_LAYOUT_VARLEN",
        'mixed steps read an "nhd" shadow pool written alongside',
    ),
    Knob("greedy_argmax", "FERRUM_GREEDY_ARGMAX", _GREEDY),
    Knob("initial_scratch_tokens", "FERRUM_MAX_BATCHED_TOKENS", _SIZING),
    Knob("moe_batched_decode_enabled", "FERRUM_MOE_BATCHED_DECODE", _SMALL_M),
    Knob("moe_batched_enabled", "FERRUM_MOE_BATCHED", _BATCHED),
    Knob("moe_batch_threshold", "FERRUM_MOE_BATCH_THRESHOLD", _BATCHED),
    Knob(
        "moe_bucketed",
        "FERRUM_MOE_BUCKETED",
        "bucketed fused MoE; off: per-(token, expert) loop of small GEMMs (the slow baseline)",
    ),
    Knob("moe_graph_requested", "FERRUM_MOE_GRAPH", _GRAPH),
    Knob("moe_graph_vllm_clean", "FERRUM_VLLM_MOE", _GRAPH, also=("FERRUM_MOE_HOST_ROUTE",)),
    Knob("moe_prefill_threshold", "FERRUM_MOE_PREFILL_THRESHOLD", _SMALL_M),
    Knob("moe_profile", "FERRUM_MOE_PROFILE", _TIMING),
    Knob("paged_max_seqs", "FERRUM_PAGED_MAX_SEQS", _SIZING),
    Knob(
        "prefix_cache",
        "FERRUM_PREFIX_CACHE",
        "reuse cached full blocks of a fresh sequence's prompt (hash chain over full blocks)",
    ),
    Knob(
        "qwen_unified_prefill",
        "FERRUM_QWEN_UNIFIED_PREFILL",
        "mixed batches (prefill chunks + decodes) run as one step; off: prefills one by "
        "one, then a decode batch",
    ),
    Knob("qwen_unified_trace", "FERRUM_QWEN_UNIFIED_TRACE", _TIMING),
    Knob("rbd_prof", "FERRUM_RBD_PROF", _TIMING),
    Knob("unified_greedy_argmax", "FERRUM_UNIFIED_GREEDY_ARGMAX", _GREEDY),
    Knob("unified_layer_prof", "FERRUM_UNIFIED_LAYER_PROF", _TIMING),
    Knob("unified_layer_prof_every", "FERRUM_UNIFIED_LAYER_PROF_EVERY", _TIMING),
    Knob("unified_layer_prof_max_m", "FERRUM_UNIFIED_LAYER_PROF_MAX_M", _TIMING),
    Knob("unified_layer_prof_min_seqs", "FERRUM_UNIFIED_LAYER_PROF_MIN_SEQS", _TIMING),
    Knob(
        "use_vllm_paged_attn",
        "FERRUM_USE_VLLM_PAGED_ATTN",
        'KV pool in the "vllm" layout; off: "nhd"',
    ),
    Knob(
        "vllm_decode_varlen",
        "FERRUM_VLLM_DECODE_VARLEN",
        "decode steps run through the varlen kernel",
    ),
    Knob(
        "vllm_varlen_tiled_q4",
        "FERRUM_VLLM_VARLEN_TILED_Q4",
        "q_len>1 steps use the tiled-Q4 varlen kernel",
    ),
    Knob("_kv_capacity", "FERRUM_KV_CAPACITY", _SIZING),
    Knob(
        "_metal_paged_kv",
        "FERRUM_METAL_PAGED_KV",
        "paged KV on (CUDA default on); off: contiguous per-sequence KV",
    ),
)

KNOWN_VARS: tuple[str, ...] = (
    tuple(name for knob in KNOBS for name in (knob.variable, *knob.also)) + EXTRA_KNOWN_VARS
)


def closest_known_var(name: str) -> str:
    """The known variable whose name is closest to ``name``."""
    # Compare without the shared prefix, which would make every name look alike.
    by_suffix = {known.removeprefix("FERRUM_"): known for known in KNOWN_VARS}
    match = difflib.get_close_matches(name.removeprefix("FERRUM_"), by_suffix, n=1, cutoff=0.0)
    return by_suffix[match[0]]


# --------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------

_WARNED: set[tuple[str, ...]] = set()


def reset_env_warnings() -> None:
    """Forget which (variable, value) pairs were already warned about."""
    _WARNED.clear()


def _warn_once(key: tuple[str, ...], message: str) -> None:
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, FerrumEnvWarning, stacklevel=_stacklevel_outside_module())


def _stacklevel_outside_module() -> int:
    """Stack level of the first frame outside this file, as seen from _warn_once."""
    frame, level = sys._getframe(1), 1  # level 1 is _warn_once itself
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _warn_value(name: str, value: str, reading: str) -> None:
    _warn_once((name, value), f"{name}={value!r} {reading}")


# --------------------------------------------------------------------------
# Value readers: each reproduces one Rust expression of the seed
# --------------------------------------------------------------------------

_U64_MAX = 2**64 - 1
_UNSIGNED = re.compile(r"\+?[0-9]+")
_TRUEISH = ("1", "true", "TRUE", "on", "ON")
_FALSEISH = ("0", "false", "FALSE", "off", "OFF")


def parse_rust_u64(text: str) -> int | None:
    """Rust's ``str::parse::<u64>()`` (= ``usize`` on 64-bit): None where Rust errs.

    ASCII digits only, with an optional leading '+' (Rust's unsigned from_str
    accepts it); no whitespace, '-', '_', other Unicode digits, or overflow.
    """
    if _UNSIGNED.fullmatch(text) is None:
        return None
    digits = text.removeprefix("+").lstrip("0") or "0"
    if len(digits) > 20:  # also keeps int() clear of its max-digits limit
        return None
    value = int(digits)
    return value if value <= _U64_MAX else None


def _positive_int(vars_: dict[str, str], name: str, default: int | None = None) -> int | None:
    """``positive_usize(&vars, name).unwrap_or(default)`` (also the u64 knob)."""
    value = vars_.get(name)
    if value is None:
        return default
    parsed = parse_rust_u64(value)
    if parsed is not None and parsed > 0:
        return parsed
    fallback = "treated as unset" if default is None else f"using the default {default}"
    _warn_value(name, value, f"is ignored: expected a positive integer; {fallback}")
    return default


def _is_one(vars_: dict[str, str], name: str) -> bool:
    """``vars.get(name).is_some_and(|v| v == "1")``."""
    value = vars_.get(name)
    if value not in (None, "0", "1"):
        _warn_value(name, value, 'is read as off: only "1" turns it on')
    return value == "1"


def _not_zero(vars_: dict[str, str], name: str) -> bool | None:
    """``vars.get(name).map(|v| v != "0")``: None when unset."""
    value = vars_.get(name)
    if value is None:
        return None
    if value != "1" and value != "0":
        _warn_value(name, value, 'is read as on: only "0" turns it off')
    return value != "0"


def _unless_zero(vars_: dict[str, str], name: str) -> bool:
    """``vars.get(name).is_none_or(|v| v != "0")``: on by default."""
    return _not_zero(vars_, name) is not False


def _looks_off(value: str) -> bool:
    return value.strip().lower() in ("", "0", "false", "off", "no")


def _present(vars_: dict[str, str], name: str) -> bool:
    """``vars.contains_key(name)``: any value, even "0", turns it on."""
    value = vars_.get(name)
    if value is not None and _looks_off(value):
        _warn_value(name, value, "turns it on: any value does; unset the variable to turn it off")
    return value is not None


def _trueish(vars_: dict[str, str], name: str) -> bool:
    value = vars_.get(name)
    if value is not None and value not in _TRUEISH + _FALSEISH:
        _warn_value(name, value, f"is read as off: only {'/'.join(_TRUEISH)} turn it on")
    return value in _TRUEISH


def _fa2_direct_ffi(vars_: dict[str, str]) -> bool:
    name, shim = "FERRUM_FA2_DIRECT_FFI", "FERRUM_FA2_DIRECT_FFI_SHIM"
    value = vars_.get(name)
    if value is None:
        # Falls back to the mere presence of the shim path.
        shim_path = vars_.get(shim)
        if shim_path is not None and _looks_off(shim_path):
            _warn_value(shim, shim_path, f"turns {name} on: only its presence is read")
        return shim_path is not None
    if value in _FALSEISH:
        return False
    if value not in _TRUEISH:
        _warn_value(name, value, f"is read as on: only {'/'.join(_FALSEISH)} turn it off")
    return True


def _check_unified_greedy(vars_: dict[str, str], greedy_argmax: bool) -> None:
    name = "FERRUM_UNIFIED_GREEDY_ARGMAX"
    value = vars_.get(name)
    if value == "1" and not greedy_argmax:
        _warn_value(name, value, "has no effect: it also needs FERRUM_GREEDY_ARGMAX=1")


def _check_unknown_names(vars_: dict[str, str]) -> None:
    known = set(KNOWN_VARS)
    for name in vars_:
        if name.startswith("FERRUM_") and name not in known:
            _warn_once(
                (name,),
                f"{name} is not a variable ferrum_ext reads; closest known name: {closest_known_var(name)}",
            )


def _collect(env_vars: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """HashMap collect: a later duplicate key wins."""
    pairs = env_vars.items() if isinstance(env_vars, Mapping) else env_vars
    collected: dict[str, str] = {}
    for key, value in pairs:
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"env vars must be str pairs, got ({key!r}, {value!r})")
        collected[key] = value
    return collected


# --------------------------------------------------------------------------
# Qwen3MoeRuntimeEnv
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Qwen3MoeRuntimeEnv:
    """Every field defaults to what an empty environment parses to."""

    decode_op_profile: bool = False
    fa2_direct_ffi: bool = False
    fa2_source: bool = False
    fa_layout_varlen: bool = False
    greedy_argmax: bool = False
    initial_scratch_tokens: int = 2048
    moe_batched_decode_enabled: bool = True
    moe_batched_enabled: bool = True
    moe_batch_threshold: int = 4
    moe_bucketed: bool = True
    moe_graph_requested: bool = False
    moe_graph_vllm_clean: bool = False
    moe_prefill_threshold: int = 32
    moe_profile: bool = False
    paged_max_seqs: int = 32
    prefix_cache: bool = False
    qwen_unified_prefill: bool = True
    qwen_unified_trace: bool = False
    rbd_prof: bool = False
    unified_greedy_argmax: bool = False
    unified_layer_prof: bool = False
    unified_layer_prof_every: int = 16
    unified_layer_prof_max_m: int | None = None
    unified_layer_prof_min_seqs: int | None = None
    use_vllm_paged_attn: bool = True
    vllm_decode_varlen: bool = False
    vllm_varlen_tiled_q4: bool = False
    _kv_capacity: int | None = None
    _metal_paged_kv: bool | None = None

    @classmethod
    def from_env(cls) -> Qwen3MoeRuntimeEnv:
        """Resolve from the process-wide snapshot (os.environ when none is installed)."""
        return cls.from_runtime_config_snapshot(active_runtime_snapshot())

    @classmethod
    def from_runtime_config_snapshot(cls, snapshot: RuntimeConfigSnapshot) -> Qwen3MoeRuntimeEnv:
        return cls.from_env_vars((e.key, e.effective_value) for e in snapshot.entries)

    @classmethod
    def from_env_vars(cls, env_vars: Mapping[str, str] | Iterable[tuple[str, str]]) -> Qwen3MoeRuntimeEnv:
        v = _collect(env_vars)
        _check_unknown_names(v)
        greedy_argmax = _is_one(v, "FERRUM_GREEDY_ARGMAX")
        _check_unified_greedy(v, greedy_argmax)
        # `&` where Rust has `&&`: same result, but both variables get checked.
        return cls(
            decode_op_profile=_present(v, "FERRUM_DECODE_OP_PROFILE"),
            fa2_direct_ffi=_fa2_direct_ffi(v),
            fa2_source=_trueish(v, "FERRUM_FA2_SOURCE"),
            fa_layout_varlen=_is_one(v, "FERRUM_FA_LAYOUT_VARLEN"),
            greedy_argmax=greedy_argmax,
            initial_scratch_tokens=_positive_int(v, "FERRUM_MAX_BATCHED_TOKENS", 2048),
            moe_batched_decode_enabled=_unless_zero(v, "FERRUM_MOE_BATCHED_DECODE"),
            moe_batched_enabled=_unless_zero(v, "FERRUM_MOE_BATCHED"),
            moe_batch_threshold=_positive_int(v, "FERRUM_MOE_BATCH_THRESHOLD", 4),
            moe_bucketed=_unless_zero(v, "FERRUM_MOE_BUCKETED"),
            moe_graph_requested=_is_one(v, "FERRUM_MOE_GRAPH"),
            moe_graph_vllm_clean=(_is_one(v, "FERRUM_VLLM_MOE") & (not _is_one(v, "FERRUM_MOE_HOST_ROUTE"))),
            moe_prefill_threshold=_positive_int(v, "FERRUM_MOE_PREFILL_THRESHOLD", 32),
            moe_profile=_present(v, "FERRUM_MOE_PROFILE"),
            paged_max_seqs=_positive_int(v, "FERRUM_PAGED_MAX_SEQS", 32),
            prefix_cache=_is_one(v, "FERRUM_PREFIX_CACHE"),
            qwen_unified_prefill=_unless_zero(v, "FERRUM_QWEN_UNIFIED_PREFILL"),
            qwen_unified_trace=_is_one(v, "FERRUM_QWEN_UNIFIED_TRACE"),
            rbd_prof=_present(v, "FERRUM_RBD_PROF"),
            unified_greedy_argmax=(greedy_argmax & _unless_zero(v, "FERRUM_UNIFIED_GREEDY_ARGMAX")),
            # is_some_and(|v| v != "0"): off when unset, on for any value but "0".
            unified_layer_prof=bool(_not_zero(v, "FERRUM_UNIFIED_LAYER_PROF")),
            unified_layer_prof_every=_positive_int(v, "FERRUM_UNIFIED_LAYER_PROF_EVERY", 16),
            unified_layer_prof_max_m=_positive_int(v, "FERRUM_UNIFIED_LAYER_PROF_MAX_M"),
            unified_layer_prof_min_seqs=_positive_int(v, "FERRUM_UNIFIED_LAYER_PROF_MIN_SEQS"),
            use_vllm_paged_attn=_unless_zero(v, "FERRUM_USE_VLLM_PAGED_ATTN"),
            vllm_decode_varlen=_is_one(v, "FERRUM_VLLM_DECODE_VARLEN"),
            vllm_varlen_tiled_q4=_is_one(v, "FERRUM_VLLM_VARLEN_TILED_Q4"),
            _kv_capacity=_positive_int(v, "FERRUM_KV_CAPACITY"),
            _metal_paged_kv=_not_zero(v, "FERRUM_METAL_PAGED_KV"),
        )

    def kv_capacity(self, model_max: int) -> int:
        if self._kv_capacity is None:
            return min(model_max, DEFAULT_KV_CAPACITY)
        return min(self._kv_capacity, model_max)

    def metal_paged_kv_enabled(self, backend_default: bool) -> bool:
        return backend_default if self._metal_paged_kv is None else self._metal_paged_kv

    def unified_layer_prof_selected(self, m_total: int, num_seqs: int) -> bool:
        if not self.unified_layer_prof:
            return False
        max_m, min_seqs = self.unified_layer_prof_max_m, self.unified_layer_prof_min_seqs
        if max_m is not None and m_total > max_m:
            return False
        return min_seqs is None or num_seqs >= min_seqs


# --------------------------------------------------------------------------
# `python -m ferrum_ext env`
# --------------------------------------------------------------------------


def _effective(knob: Knob, env: Qwen3MoeRuntimeEnv) -> str:
    value = getattr(env, knob.field)
    if knob.field == "_kv_capacity":
        note = f"default {DEFAULT_KV_CAPACITY}" if value is None else "explicit"
        return f"{value} ({note}, capped at the model max)"
    if knob.field == "_metal_paged_kv" and value is None:
        return "None (backend default; CUDA: on)"
    return str(value)


def _row(
    snapshot: RuntimeConfigSnapshot, variable: str, value: str, selects: str, indent: str = ""
) -> tuple[str, ...]:
    entry = snapshot.get(variable)
    raw = "" if entry is None else repr(entry.effective_value)
    source = "default" if entry is None else entry.source.value
    return (indent + variable, value, raw, source, selects)


def _table_rows(env: Qwen3MoeRuntimeEnv, snapshot: RuntimeConfigSnapshot) -> list[tuple[str, ...]]:
    rows = []
    for knob in KNOBS:
        rows.append(_row(snapshot, knob.variable, _effective(knob, env), knob.selects))
        for extra in knob.also:
            rows.append(_row(snapshot, extra, "", f"(also read for {knob.field})", indent="  "))
    for extra in EXTRA_KNOWN_VARS:
        rows.append(_row(snapshot, extra, "", "(read elsewhere in ferrum_ext)"))
    known = set(KNOWN_VARS)
    for entry in snapshot.entries:
        if entry.key.startswith("FERRUM_") and entry.key not in known:
            note = f"(unknown; closest known name: {closest_known_var(entry.key)})"
            rows.append(_row(snapshot, entry.key, "", note))
    return rows


def format_env_table(
    env: Qwen3MoeRuntimeEnv | None = None, snapshot: RuntimeConfigSnapshot | None = None
) -> str:
    """Every knob: variable, effective value, raw value, source and what it selects."""
    snapshot = active_runtime_snapshot() if snapshot is None else snapshot
    env = Qwen3MoeRuntimeEnv.from_runtime_config_snapshot(snapshot) if env is None else env
    header = ("variable", "effective", "set to", "source", "selects")
    rows = [header, *_table_rows(env, snapshot)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


def main_env(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ferrum_ext env",
        description="Print every FERRUM_* knob, its effective value and where it came from.",
    )
    parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FerrumEnvWarning)
        table = format_env_table()
    print(table)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return 0
