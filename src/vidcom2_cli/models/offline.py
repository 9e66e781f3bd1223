"""Tokenizers and processors for the supported video-LLM families, built without the model hub.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained on a short inline
text with the `tokenizers` library, carrying the special tokens and chat template of the real
checkpoints, and the processors are the real transformers classes configured with the sizes
the caller asks for. Saved with `save_pretrained`, the result loads by path through
`AutoProcessor.from_pretrained` exactly like a real checkpoint's processor. Tests use it at tiny
sizes; random-weight presets use it at the real sizes (the defaults below).
"""

from __future__ import annotations

import json

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    Glm4vImageProcessor,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    Glm46VImageProcessor,
    Glm46VProcessor,
    Glm46VVideoProcessor,
    GotOcr2ImageProcessor,
    InternVLProcessor,
    InternVLVideoProcessor,
    LlavaNextImageProcessor,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.processing_utils import ProcessorMixin

# Qwen3-VL's processor, vision placeholders and chat template serve the families after it too:
# transformers maps qwen3_vl_moe, qwen3_5 and qwen3_5_moe to Qwen3VLProcessor.
QWEN3_FAMILIES: tuple[str, ...] = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
FAMILIES: tuple[str, ...] = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", *QWEN3_FAMILIES,
                             "llava_next_video", "internvl", "glm4v", "glm46v")

# Special tokens in the order the real Qwen2 tokenizer numbers them (after the BPE vocabulary),
# keeping only those the chat templates and processors use.
_CHATML_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_QWEN_VISION_TOKENS = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
SPECIAL_TOKENS: dict[str, list[str]] = {
    "llava_onevision": [*_CHATML_TOKENS, "<image>", "<video>"],
    # The real LLaVA-NeXT-Video checkpoints use a Llama tokenizer; the offline one keeps the
    # ChatML end and pad tokens the other families share.
    "llava_next_video": [*_CHATML_TOKENS, "<image>", "<video>"],
    "internvl": [*_CHATML_TOKENS, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
    # GLM's own tokenizer; the ChatML end and pad tokens stay for the offline one.
    **{family: [
        *_CHATML_TOKENS, "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>",
        "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
        "<|image|>", "<|video|>"] for family in ("glm4v", "glm46v")},
    "qwen2_vl": _CHATML_TOKENS + _QWEN_VISION_TOKENS,
    "qwen2_5_vl": _CHATML_TOKENS + _QWEN_VISION_TOKENS,
    **{family: _CHATML_TOKENS + _QWEN_VISION_TOKENS for family in QWEN3_FAMILIES},
}
# Special tokens a processor reads from the tokenizer by name (InternVL's).
NAMED_SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "internvl": {"start_image_token": "<img>", "end_image_token": "</img>",
                 "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
}
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# The chat template of llava-hf/llava-onevision-qwen2-*-ov-hf.
_LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A Vicuna-style template as llava-hf/LLaVA-NeXT-Video-*-hf use ("USER: <video>\n... ASSISTANT:"):
# media first, then the text.
_LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# ChatML as OpenGVLab/InternVL3-*-hf use it, media as "<video>\n" before the text (no default
# system turn here).
_INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# GLM-4.xV's turn markers (no thinking or tool branches): "[gMASK]<sop><|user|>\n" then the video
# between its begin/end tokens, the text, and "<|assistant|>\n".
_GLM4V_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{% elif content['type'] == 'video' %}{{ '<|begin_of_video|><|video|><|end_of_video|>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# The chat template of Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct.
_QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The chat template of Qwen/Qwen3-VL-*-Instruct without its tool-calling branches: no default
# system prompt, the same vision placeholders as Qwen2-VL.
_QWEN3_VL_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_vision_count) %}"
    "{%- if content is string %}{{- content }}"
    "{%- else %}{%- for item in content %}"
    "{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'video' in item or item.type == 'video' %}"
    "{%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item %}{{- item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\n' + render_content(messages[0].content, false) + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or message.role == 'assistant'"
    " or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + render_content(message.content, true)"
    " + '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Qwen3.5's generation prompt: a thinking block opens unless enable_thinking is false, when it
# comes closed and empty (the real template's ending; its tool and history branches left out).
_QWEN3_5_TEMPLATE = _QWEN3_VL_TEMPLATE.replace(
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\n\n</think>\n\n' }}{%- else %}{{- '<think>\n' }}{%- endif %}"
    "{%- endif %}")

CHAT_TEMPLATES: dict[str, str] = {
    "llava_onevision": _LLAVA_ONEVISION_TEMPLATE,
    "qwen2_vl": _QWEN2_VL_TEMPLATE,
    "qwen2_5_vl": _QWEN2_VL_TEMPLATE,
    "qwen3_vl": _QWEN3_VL_TEMPLATE,
    "qwen3_vl_moe": _QWEN3_VL_TEMPLATE,
    "qwen3_5": _QWEN3_5_TEMPLATE,
    "qwen3_5_moe": _QWEN3_5_TEMPLATE,
    "llava_next_video": _LLAVA_NEXT_VIDEO_TEMPLATE,
    "internvl": _INTERNVL_TEMPLATE,
    "glm4v": _GLM4V_TEMPLATE,
    "glm46v": _GLM4V_TEMPLATE,
}

_QWEN2_VIDEO_SIZES = {
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 128 * 28 * 28,
    "max_pixels": 768 * 28 * 28,
}
# Vision sizes of the real checkpoints, the defaults of `build_processor`. `min_pixels` and
# `max_pixels` are the video processor's limits as each family reads them: per frame for
# Qwen2-VL and Qwen2.5-VL, for the whole clip (frames x height x width) for Qwen3-VL.
REAL_VISION_SIZES: dict[str, dict[str, int]] = {
    "llava_onevision": {"image_size": 384, "patch_size": 14},
    "llava_next_video": {"image_size": 336, "patch_size": 14},  # CLIP ViT-L/14-336
    # InternViT at 448 px, 14 px patches, pixel-shuffled by 0.5: 16 x 16 = 256 tokens per frame
    "internvl": {"image_size": 448, "patch_size": 14},
    # Limits for the whole clip (frames x height x width), the video processor's defaults
    **{family: {
        "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
        "min_pixels": 112 * 112, "max_pixels": 28 * 28 * 2 * 30000}
       for family in ("glm4v", "glm46v")},
    "qwen2_vl": _QWEN2_VIDEO_SIZES,
    "qwen2_5_vl": _QWEN2_VIDEO_SIZES,
    **{family: {
        "patch_size": 16,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "min_pixels": 4096,
        "max_pixels": 25165824,
    } for family in QWEN3_FAMILIES},
}

_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog while a camera records the whole scene.
A short video shows a red ball rolling across a green field, then bouncing off a wooden fence.
What is happening in this video? Describe the scene in detail, frame by frame.
The camera pans slowly to the left while a person in a yellow jacket walks along the river.
How many people appear in the clip? Two children play with a small dog near the water.
The sun sets behind the hills and the sky turns orange, purple and finally dark blue.
A rabbit wakes up, stretches, and hops out of its burrow under a large oak tree.
Three birds fly above the meadow; one of them lands on a branch and starts singing.
Question: what color is the car parked next to the house? Answer: the car is silver.
Question: does the man open the door before or after the phone rings? Answer: after.
Each frame of the video is split into patches, and every patch becomes a visual token.
Visual tokens are compressed so that the language model reads fewer of them and answers faster.
The assistant watches the video carefully and gives a short, accurate answer to the user.
Please summarize the main events, mention the objects, the actions and where they happen.
At the beginning, a woman cooks dinner in the kitchen; later, her family sits at the table.
Traffic moves through the busy city street, buses stop, and pedestrians cross at the light.
A chef slices tomatoes, onions and peppers, then stirs the sauce in a hot metal pan.
The football player kicks the ball towards the goal, but the keeper jumps and catches it.
Snow falls quietly on the mountain village, and smoke rises from every chimney.
In the final scene, everyone waves goodbye as the train leaves the station at noon.
"""
_DEFAULT_MERGES = 800


def build_tokenizer(family: str, vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer with the family's special tokens and chat template.

    The pre-tokenizer, normalizer and decoder are Qwen2's (all four families use the Qwen2
    tokenizer), and the special tokens follow the regular vocabulary as in the real
    checkpoints. With `vocab_size` the tokenizer has exactly that many ids: fewer merges are
    learned when it is small, and filler tokens ("[n]", reachable by no merge but decodable)
    follow the special tokens when it is large, so that any id a random-weight model of that
    vocabulary emits decodes to text.
    """
    _check_family(family)
    specials = SPECIAL_TOKENS[family]
    merges_budget = _DEFAULT_MERGES
    if vocab_size is not None:
        merges_budget = min(merges_budget, vocab_size - 256 - len(specials))
        if merges_budget < 0:
            raise ValueError(
                f"vocab_size={vocab_size} cannot hold the 256 byte tokens and "
                f"{len(specials)} special tokens"
            )

    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=256 + merges_budget,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TRAINING_TEXT.splitlines(), trainer)

    learned = bpe.get_vocab(with_added_tokens=False)
    vocab = dict(sorted(learned.items(), key=lambda item: item[1]))
    for token in specials:
        vocab[token] = len(vocab)
    if vocab_size is not None:
        vocab.update((f"[{index}]", index) for index in range(len(vocab), vocab_size))
    merges = _merges_of(bpe)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=NAMED_SPECIAL_TOKENS.get(family, specials),
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    return tokenizer


def build_processor(
    family: str, tokenizer: PreTrainedTokenizerFast, **vision_sizes: int
) -> ProcessorMixin:
    """Build the family's real processor class around `tokenizer`.

    `vision_sizes` overrides entries of `REAL_VISION_SIZES[family]` (same keys); the sizes must
    match the vision config of the model the processor is saved with.
    """
    _check_family(family)
    unknown = set(vision_sizes) - set(REAL_VISION_SIZES[family])
    if unknown:
        raise TypeError(f"unknown vision sizes for {family}: {sorted(unknown)}")
    sizes = {**REAL_VISION_SIZES[family], **vision_sizes}
    template = CHAT_TEMPLATES[family]

    if family == "llava_onevision":
        side = sizes["image_size"]
        square = {"height": side, "width": side}
        # The real pinpoints are the multiples of the tower's image size up to 6x6 tiles.
        pinpoints = [[side * i, side * j] for i in range(1, 7) for j in range(1, 7)]
        return LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(
                size=square, image_grid_pinpoints=pinpoints
            ),
            tokenizer=tokenizer,
            video_processor=LlavaOnevisionVideoProcessor(size=square),
            # Patches per frame before pooling; SigLIP has no CLS token, hence "full".
            num_image_tokens=(side // sizes["patch_size"]) ** 2,
            vision_feature_select_strategy="full",
            chat_template=template,
        )

    if family in ("glm4v", "glm46v"):
        patching = {key: sizes[key] for key in ("patch_size", "merge_size", "temporal_patch_size")}
        classes = {"glm4v": (Glm4vProcessor, Glm4vImageProcessor, Glm4vVideoProcessor),
                   "glm46v": (Glm46VProcessor, Glm46VImageProcessor, Glm46VVideoProcessor)}
        processor_class, image_class, video_class = classes[family]
        return processor_class(
            image_processor=image_class(**patching),
            tokenizer=tokenizer,
            video_processor=video_class(
                size={"shortest_edge": sizes["min_pixels"], "longest_edge": sizes["max_pixels"]},
                **patching),
            chat_template=template,
        )

    if family == "internvl":
        side = sizes["image_size"]
        square = {"height": side, "width": side}
        return InternVLProcessor(
            image_processor=GotOcr2ImageProcessor(size=square, crop_to_patches=False),
            tokenizer=tokenizer,
            video_processor=InternVLVideoProcessor(size=square),
            image_seq_length=(side // sizes["patch_size"]) ** 2 // 4,  # pixel shuffle by 0.5
            chat_template=template,
        )

    if family == "llava_next_video":
        side = sizes["image_size"]
        square = {"height": side, "width": side}
        return LlavaNextVideoProcessor(
            video_processor=LlavaNextVideoVideoProcessor(size={"shortest_edge": side},
                                                         crop_size=square),
            image_processor=LlavaNextImageProcessor(
                size={"shortest_edge": side}, crop_size=square,
                image_grid_pinpoints=[[side * i, side * j] for i in (1, 2) for j in (1, 2)]),
            tokenizer=tokenizer,
            patch_size=sizes["patch_size"],
            vision_feature_select_strategy="default",  # CLIP: the CLS token is dropped
            num_additional_image_tokens=1,
            chat_template=template,
        )

    patching = {
        "patch_size": sizes["patch_size"],
        "merge_size": sizes["merge_size"],
        "temporal_patch_size": sizes["temporal_patch_size"],
    }
    video_size = {"shortest_edge": sizes["min_pixels"], "longest_edge": sizes["max_pixels"]}
    if family in QWEN3_FAMILIES:
        return Qwen3VLProcessor(
            # Qwen3-VL normalises with mean = std = 0.5 where Qwen2-VL uses CLIP's statistics.
            image_processor=Qwen2VLImageProcessor(
                **patching, image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD
            ),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(size=video_size, **patching),
            chat_template=template,
        )
    processor_class = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    return processor_class(
        image_processor=Qwen2VLImageProcessor(**patching),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=video_size, **patching),
        chat_template=template,
    )


def _merges_of(bpe: Tokenizer) -> list[tuple[str, str]]:
    """The learned merges, in order (the `tokenizers` Python API only exposes them serialised)."""
    return [(left, right) for left, right in json.loads(bpe.to_str())["model"]["merges"]]


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
