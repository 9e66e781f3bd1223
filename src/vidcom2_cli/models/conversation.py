"""A question asked inside a conversation: the chat messages around the one video.

``ask``, ``chat`` and ``batch`` ask one question per prompt; an OpenAI-style request may carry a
system message and earlier turns too. ``Conversation`` is a ``str`` (the question asked now,
what reports show) that also knows the messages it stands in, so it travels through the engine
wherever a question does, and the adapter renders the whole conversation with the model's chat
template.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    text: str


class Conversation(str):
    """The messages of a chat about one video, as the question they ask now.

    ``before`` are the messages before the user message that carries the video (a system
    message, earlier turns); ``video_text`` is that message's text, which the template puts
    after the video; ``after`` are the turns that follow it. The string value is the last user
    text (``video_text`` when nothing follows).
    """

    before: tuple[Message, ...]
    video_text: str
    after: tuple[Message, ...]

    def __new__(cls, before: Sequence[Message], video_text: str,
                after: Sequence[Message] = ()) -> Conversation:
        users = [message.text for message in after if message.role == "user"]
        value = super().__new__(cls, users[-1] if users else video_text)
        value.before = tuple(before)
        value.video_text = video_text
        value.after = tuple(after)
        return value

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickling (Ray): rebuild from the parts
        return (self.before, self.video_text, self.after)

    @property
    def head(self) -> tuple[Message, ...]:
        """What precedes the video in the prompt; two conversations with the same head about
        the same video share the prompt prefix up to the video's end."""
        return self.before

    def texts(self) -> list[str]:
        return [message.text for message in self.before] + [self.video_text] + [
            message.text for message in self.after]


def template_messages(question: str) -> list[dict[str, Any]]:
    """The chat-template messages of a question: one user turn (the video, then the text), or a
    ``Conversation``'s turns around it. Content is always a list of parts (some templates
    iterate it)."""
    if not isinstance(question, Conversation):
        return [_user_with_video(question)]
    return ([_message(message) for message in question.before]
            + [_user_with_video(question.video_text)]
            + [_message(message) for message in question.after])


def head_key(question: str) -> str:
    """The messages before the video as part of a cache key: "" when there are none (a plain
    question), so that keys made before conversations existed stay valid."""
    if not isinstance(question, Conversation) or not question.before:
        return ""
    return ",head=" + json.dumps([[message.role, message.text] for message in question.before],
                                 ensure_ascii=False)


def question_texts(question: str) -> list[str]:
    """Every text the prompt of ``question`` holds (to check for special tokens)."""
    return question.texts() if isinstance(question, Conversation) else [question]


def _user_with_video(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}


def _message(message: Message) -> dict[str, Any]:
    return {"role": message.role, "content": [{"type": "text", "text": message.text}]}
