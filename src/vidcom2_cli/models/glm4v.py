"""GLM-4.1V / GLM-4.5V / GLM-4.6V (transformers' ``glm4v`` and ``glm46v``).

Qwen2-VL's layout with its own prompt structure: a video is ``<|begin_of_video|>``, then per
temporal unit (2 frames) ``<|begin_of_image|>`` + the unit's tokens + ``<|end_of_image|>`` and
its timestamp as text, then ``<|end_of_video|>``. The tokens of a video are image tokens
(``<|image|>``, typed as video by ``mm_token_type_ids``), so the placeholder is the image token;
the per-unit separators and timestamps are kept. Positions: the model's own 3-D
``get_rope_index`` on the full sequence, sliced, as for Qwen. The question-independent prefix
ends at ``<|end_of_video|>``, after the last timestamp.
"""

from __future__ import annotations

from .qwen_vl import QwenVLAdapter


class Glm4vAdapter(QwenVLAdapter):
    @property
    def placeholder_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def video_mark_ids(self) -> frozenset[int]:
        """The template's ``<|video|>`` (expanded by the processor into the frames) and the
        image token that fills each frame."""
        return frozenset({self.video_token_id, int(self.model.config.video_token_id)})

    @property
    def video_close_ids(self) -> frozenset[int]:
        return frozenset({int(self.model.config.video_end_token_id)})
