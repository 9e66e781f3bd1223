"""Real-size architectures with random weights: ``--model random:NAME``, no download.

Each preset is the published checkpoint's architecture (hidden sizes, layers, heads,
vocabulary, vision tower, image size), shipped as JSON in ``vidcom2_cli/presets``. The model is
built on the target device in the target dtype, so a 7B preset is ready in seconds on a GPU;
the tokenizer and processor come from ``offline`` at the real vision sizes, with the tokenizer
padded to the config's vocabulary so that every id the random model emits decodes. Answers are
meaningless, but shapes, memory and timings are those of the real model. Generation settings
are ours (greedy, one end-of-turn token), not the checkpoint's generation_config (Qwen2-VL's,
for one, adds a 1.05 repetition penalty).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import torch

from ..catalog import RANDOM_PREFIX
from .loading import (
    LoadedModel,
    LoadOptions,
    ModelLoadError,
    read_model_type,
    resolve_attention,
    resolve_device,
    resolve_dtype,
)
from .memory import check_memory

if TYPE_CHECKING:
    from transformers import PretrainedConfig

def is_random_reference(reference: str) -> bool:
    return reference.startswith(RANDOM_PREFIX)


def preset_names() -> list[str]:
    folder = resources.files("vidcom2_cli") / "presets"
    return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir()
                  if entry.name.endswith(".json"))


def preset_source(name: str) -> str:
    """The hub checkpoint whose architecture the preset reproduces."""
    return _read_preset(name)["_source"]


def preset_parameters(name: str) -> int:
    """The preset's parameter count (stored with it; tests/test_presets.py checks it against
    the model built from it)."""
    return _read_preset(name)["_parameters"]


def _read_preset(name: str) -> dict[str, Any]:
    names = preset_names()
    if name not in names:
        raise ModelLoadError(f"--model: no random-weight preset {name!r}; presets: "
                             f"{', '.join(names)}")
    text = (resources.files("vidcom2_cli") / "presets" / f"{name}.json").read_text()
    return json.loads(text)


def checkpoint_model_type(reference: str) -> str:
    """``config.model_type`` of a checkpoint or a ``random:NAME`` preset, without loading it."""
    if is_random_reference(reference):
        return _read_preset(reference.removeprefix(RANDOM_PREFIX))["model_type"]
    return read_model_type(reference)


def preset_config(name: str, token_ids: dict[str, int] | None = None) -> PretrainedConfig:
    """The preset's transformers config; ``token_ids`` (token -> id) re-points its special ids.

    The offline tokenizer numbers its special tokens differently from the real one, so the
    config's image/video/vision-boundary and bos/eos/pad ids are set to the tokenizer's.
    """
    from transformers import AutoConfig

    values = {key: value for key, value in _read_preset(name).items()
              if not key.startswith("_")}
    model_type = values.pop("model_type")
    if token_ids is not None:
        _point_special_ids(model_type, values, token_ids)
    return AutoConfig.for_model(model_type, **values)


def _point_special_ids(model_type: str, values: dict[str, Any], ids: dict[str, int]) -> None:
    from .offline import EOS_TOKEN, PAD_TOKEN

    text = values["text_config"]
    text.update(bos_token_id=ids[PAD_TOKEN], eos_token_id=ids[EOS_TOKEN],
                pad_token_id=ids[PAD_TOKEN])
    if model_type == "llava_onevision":
        values.update(image_token_index=ids["<image>"], video_token_index=ids["<video>"])
        return
    values.update(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"],
                  vision_end_token_id=ids["<|vision_end|>"])


def _processor_sizes(config: PretrainedConfig) -> dict[str, int]:
    """The processor's patching, read from the vision config so the two always agree."""
    vision = config.vision_config
    if config.model_type == "llava_onevision":
        return {"image_size": vision.image_size, "patch_size": vision.patch_size}
    return {"patch_size": vision.patch_size, "merge_size": vision.spatial_merge_size,
            "temporal_patch_size": vision.temporal_patch_size}


def build_random_model(reference: str, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Build ``random:NAME`` with random weights directly on the target device and dtype."""
    # offline imports every family's processor classes, and with them torchvision: only a
    # preset being built needs them, not the import of the model registry.
    from transformers import AutoModelForImageTextToText

    from .offline import EOS_TOKEN, PAD_TOKEN, build_processor, build_tokenizer

    name = reference.removeprefix(RANDOM_PREFIX)
    sized = preset_config(name)  # sizes the tokenizer, whose special ids the model's config takes
    model_type = sized.model_type
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    attention = resolve_attention(options.attention, device, dtype)
    if options.device_map not in (None, str(device)):
        raise ModelLoadError("--device-map: random-weight presets are built on one device; "
                             "use --device instead")
    check_memory(reference, preset_parameters(name), device, dtype,
                 alternatives={RANDOM_PREFIX + other: preset_parameters(other)
                               for other in preset_names()})
    tokenizer = build_tokenizer(model_type, sized.text_config.vocab_size)
    tokenizer.model_max_length = sized.text_config.max_position_embeddings
    token_ids = {token: tokenizer.convert_tokens_to_ids(token)
                 for token in tokenizer.all_special_tokens}
    config = preset_config(name, token_ids)
    processor = build_processor(model_type, tokenizer, **_processor_sizes(config))
    torch.manual_seed(0)  # the same random model on every run
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype,
                                                        attn_implementation=attention)
    model.eval()
    model.generation_config.eos_token_id = token_ids[EOS_TOKEN]
    model.generation_config.pad_token_id = token_ids[PAD_TOKEN]
    return LoadedModel(reference=reference, model_type=model_type, model=model,
                       processor=processor, device=device, dtype=dtype, attention=attention)
