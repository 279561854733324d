"""Models on disk: the embedded default's tokenizer and architecture, and loading any HF model.

A *model directory* is either a plain Hugging Face directory (config, safetensors,
tokenizer), a LoRA *adapter* directory (peft's adapter files, the tokenizer and a
``flywheel-model.json`` with ``format: adapter`` and the ``base`` it applies to), or a *committee*:
``member-0/``, ``member-1/``, ... each a Hugging Face directory, plus ``flywheel-model.json``. A committee votes
across independently seeded members (Lee et al., 2025) because one model's samples share its errors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.errors import ConfigError, InputError

MODEL_META = "flywheel-model.json"
PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
DEFAULT_ALPHABET = "0123456789+="


@dataclass
class TinyModelConfig:
    """The embedded default's architecture: a Llama-style decoder without positional encoding."""

    hidden_size: int = field(default=128, metadata={"help": "Width of the residual stream."})
    num_layers: int = field(default=4, metadata={"help": "Decoder layers."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads (also key/value heads)."})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width."})
    max_positions: int = field(default=512, metadata={"help": "Longest sequence in tokens (prompt + answer)."})
    alphabet: str = field(default=DEFAULT_ALPHABET, metadata={"help": "Characters the tokenizer knows."})
    nope: bool = field(default=True, metadata={"help": "No positional encoding in any layer (NoPE)."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError("model.hidden_size", "must be divisible by model.num_heads")
        if len(set(self.alphabet)) != len(self.alphabet) or not self.alphabet:
            raise ConfigError("model.alphabet", "must be non-empty with no repeated characters")


def check_alphabet(tokenizer, texts, what: str = "prompt") -> None:
    """The embedded char-level tokenizer maps a character it has no token for to padding, which would
    silently change a prompt: refuse it in one line instead. (Any other tokenizer has its own fallbacks.)"""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if type(model).__name__ != "WordLevel" or getattr(model, "unk_token", None) != PAD:
        return
    known = set(tokenizer.get_vocab())
    for text in texts:
        unknown = sorted({char for char in text if char not in known})
        if unknown:
            alphabet = "".join(sorted(k for k in known if len(k) == 1))
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise InputError(what, f"{shown!r} has characters the embedded model cannot read: {''.join(unknown)!r} "
                             f"(its alphabet: {alphabet!r}; model.alphabet sets it when a seed is trained)")


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET):
    """A one-token-per-character tokenizer, built with ``tokenizers``, saved in HF format by the caller."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, BOS: 1, EOS: 2}
    for char in alphabet:
        vocab[char] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()  # join characters back without spaces
    # A BOS token at position 0 gives NoPE attention a fixed anchor to count positions from.
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, bos_token=BOS,
                                   padding_side="left", clean_up_tokenization_spaces=False)


def build_tiny_model(config: TinyModelConfig, seed: int):
    """A freshly initialised SmolLM3 decoder; ``no_rope_layers=[0]*L`` makes every layer NoPE.

    SmolLM3 is a stock architecture that transformers and vLLM both load, so the
    embedded default needs no patched model code.
    """
    import torch
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    tokenizer = build_char_tokenizer(config.alphabet)
    model_config = SmolLM3Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        no_rope_layers=[0 if config.nope else 1] * config.num_layers,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = SmolLM3ForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def member_dirs(model_dir: str | os.PathLike) -> list[Path]:
    """The Hugging Face directories a model directory holds (one for a plain model or one committee member, a
    LoRA adapter member included).

    ``model_dir`` may also be a hub name (``Qwen/Qwen2.5-0.5B-Instruct``) already in the local cache.
    """
    model_dir = resolve_model(model_dir)
    if (model_dir / "config.json").is_file():
        return [_checked_member(model_dir)]
    if is_adapter(model_dir):
        return [model_dir]
    meta_path = model_dir / MODEL_META
    if not meta_path.is_file():
        raise InputError(model_dir, f"not a model directory (no config.json and no {MODEL_META})")
    try:
        members = json.loads(meta_path.read_text())["members"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(meta_path, "malformed model metadata", field="members") from None
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise InputError(meta_path, "expected a list of member directory names", field="members")
    paths = [model_dir / name for name in members]
    for path in paths:
        if not (path / "config.json").is_file() and not is_adapter(path):
            raise InputError(path, "committee member has no config.json (and is not a LoRA adapter)")
        if (path / "config.json").is_file():
            _checked_member(path)
    return paths


def _checked_member(path: Path) -> Path:
    """A Hugging Face model directory whose config.json is a JSON object (else transformers fails deep inside)."""
    config = path / "config.json"
    try:
        parsed = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(config, f"not valid JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise InputError(config, "expected a JSON object")
    return path


def is_adapter(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a LoRA adapter (format 'adapter') rather than full weights."""
    path = Path(path)
    return (path / "adapter_config.json").is_file() and read_model_meta(path).get("format") == "adapter"


def adapter_base(path: str | os.PathLike) -> Path:
    """The model an adapter applies to: ``base_relative`` (survives moving the whole tree), else ``base``."""
    path = Path(path)
    meta = read_model_meta(path)
    relative, absolute = meta.get("base_relative"), meta.get("base")
    if relative and (path / relative).is_dir():
        return path / relative
    if absolute and Path(absolute).is_dir():
        return Path(absolute)
    raise InputError(path / MODEL_META, f"the adapter's base model is not found (base: {meta.get('base')})",
                     field="base")


def write_adapter_meta(adapter_dir: Path, base: Path, final_dir: Path) -> None:
    """Record the base of an adapter saved in ``adapter_dir`` that will live at ``final_dir``."""
    base = Path(base).resolve()
    write_model_meta(adapter_dir, {"format": "adapter", "base": str(base),
                                   "base_relative": os.path.relpath(base, Path(final_dir).resolve())})


def read_model_meta(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / MODEL_META
    return json.loads(path.read_text()) if path.is_file() else {}


def write_model_meta(model_dir: Path, meta: dict) -> None:
    (model_dir / MODEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_member(path: str | os.PathLike, *, device: str = "cpu", precision: str = "fp32"):
    """Load one Hugging Face model and its tokenizer from a local directory or cached hub name, in eval mode.

    ``precision`` ('fp32', 'bf16', 'fp16' or 'auto', see ``flywheel.precision``) is the dtype of the
    loaded weights, always passed explicitly: transformers 5 would otherwise keep the checkpoint's
    dtype (bf16 for most hub models, emulated and slow on many CPUs). Training loads fp32 master weights.
    An adapter directory loads its base (recursively: a base may be an adapter too),
    applies the adapter with peft and merges it, so callers always get a plain model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.precision import resolve_precision, torch_dtype

    dtype = torch_dtype(resolve_precision(precision, device))
    path = resolve_model(path)
    if is_adapter(path):
        from peft import PeftModel

        base, _ = load_member(adapter_base(path), device=device, precision=precision)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer
    if not (path / "config.json").is_file():
        raise InputError(path, "not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype).to(device)
    model.eval()
    return model, tokenizer


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def looks_like_hub_name(name: str) -> bool:
    """``owner/name`` with no other path parts: what the Hugging Face hub calls a repo id."""
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "~")) and "\\" not in str(name)


def project_home() -> Path:
    """Where a config's relative paths resolve, in every door: ``FLYWHEEL_HOME`` where it is set (the images set
    it to the project directory they ship, /opt/flywheel, whatever directory a pod starts in), else the
    current directory (a checkout, where `flywheel run` and `dvc repro` run)."""
    return Path(os.environ.get("FLYWHEEL_HOME") or ".")


def seed_location(path: str) -> str:
    """``seed.path`` as every door reads it: an absolute path as it is; a relative one under ``project_home()``;
    a hub name (``owner/name``) as it is when no such directory is there."""
    if not path or Path(path).is_absolute():
        return path
    candidate = project_home() / path
    return str(candidate) if candidate.exists() or not looks_like_hub_name(path) else path


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A local model directory: the path itself if it exists, else a hub name's snapshot in the local cache.

    Never downloads (``local_files_only``): the flywheel runs offline on cluster nodes, and
    a missing model should fail in a second with a line saying how to fetch it, not
    half an hour into a round. ``HF_HUB_CACHE`` (or ``HF_HOME``) selects the cache, as for every HF library.
    """
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise InputError(path, "model path is not a directory")
        return path
    if not looks_like_hub_name(str(name_or_path)):
        raise InputError(path, "model directory not found")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), local_files_only=True,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise InputError(path, "model directory not found, and not in the local Hugging Face cache "
                         f"(fetch it first: hf download {name_or_path})") from None


CHAT_ALPHABET = "".join(chr(code) for code in range(32, 127)) + "\n"
# A short template in the common shape (role header, content, end-of-turn token). It writes
# BOS itself, as Llama/SmolLM templates do; the tokenizer adds none on encoding.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_tiny_chat_model(out_dir: str | os.PathLike, *, seed: int = 0, hidden_size: int = 48, num_layers: int = 2,
                          num_heads: int = 4, intermediate_size: int = 128, max_positions: int = 2048) -> Path:
    """A ~60k-parameter chat model saved as a plain HF directory: for tests and smoke runs of chat tasks.

    Character-level tokenizer over printable ASCII and newline with a chat template,
    a SmolLM3 decoder with RoPE. It answers nonsense; it exists so every code path a
    real instruct model takes (chat template, conversational SFT) runs in seconds.
    """
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SmolLM3Config, SmolLM3ForCausalLM

    vocab = {PAD: 0, BOS: 1, EOS: 2}
    for char in CHAT_ALPHABET:
        vocab[char] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # newline too
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, bos_token=BOS,
                                        padding_side="left", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = SmolLM3Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, no_rope_layers=[1] * num_layers, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = SmolLM3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir = Path(out_dir)
    from flywheel import io

    with io.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
