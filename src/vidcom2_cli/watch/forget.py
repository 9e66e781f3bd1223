"""What a stream forgets when it holds more tokens than ``--memory-tokens``: pure arithmetic over
the chunks' token counts, so that the policy is tested without a model.

The held stream is rebuilt in the language model's cache from the first chunk that changed, so
each forgetting brings the total down to ``HEADROOM`` of the budget: the cache is rebuilt once
per quarter of the budget streamed, not after every chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ForgetMode = Literal["oldest", "compress"]
FORGET_MODES: tuple[str, ...] = ("oldest", "compress")
HEADROOM = 0.75  # a forgetting brings the held tokens down to this share of the budget


@dataclass(frozen=True)
class HeldCount:
    """One held chunk as the policy sees it: its tokens in the cache, the fewest it may be
    recompressed to (its structural tokens and one visual token per frame), and how many
    times it was recompressed already."""

    tokens: int
    floor: int
    level: int = 0


@dataclass(frozen=True)
class Forgetting:
    """The policy's decision: the new token count of every chunk (0: dropped), in order."""

    counts: list[int]

    def changed_from(self, before: list[HeldCount]) -> int | None:
        """The index of the oldest chunk whose count changed, None when none did."""
        for index, (count, held) in enumerate(zip(self.counts, before, strict=True)):
            if count != held.tokens:
                return index
        return None


def plan_forgetting(chunks: list[HeldCount], fixed: int, budget: int, mode: ForgetMode
                    ) -> Forgetting:
    """New counts that fit ``fixed`` (the tokens every prompt holds: the chat template's head)
    plus the chunks within ``budget``; unchanged when they fit already.

    ``oldest`` drops whole chunks, oldest first, down to ``HEADROOM`` of the budget.
    ``compress`` halves chunks (never below their floor), always the least recompressed one and
    the oldest among those, so the older a chunk the fewer tokens it keeps; when every chunk but
    the newest is at its floor, the oldest is dropped. The newest chunk is never touched (it was
    just encoded; a budget too small for it alone is refused when the stream starts).
    """
    counts = [chunk.tokens for chunk in chunks]
    if fixed + sum(counts) <= budget:
        return Forgetting(counts)
    target = max(int(budget * HEADROOM), fixed + counts[-1] if counts else fixed)
    levels = [chunk.level for chunk in chunks]
    older = range(len(chunks) - 1)
    while fixed + sum(counts) > target:
        if mode == "oldest":
            victim = next((index for index in older if counts[index]), None)
            if victim is None:
                break
            counts[victim] = 0
            continue
        halvable = [index for index in older if counts[index] > chunks[index].floor]
        if halvable:
            index = min(halvable, key=lambda i: (levels[i], i))
            counts[index] = max(chunks[index].floor, counts[index] // 2)
            levels[index] += 1
            continue
        victim = next((index for index in older if counts[index]), None)
        if victim is None:
            break
        counts[victim] = 0
    return Forgetting(counts)
