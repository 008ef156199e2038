"""Prompt-lookup drafting: guess the next tokens from where the text so far repeats itself.

A reply that copies its prompt (rewrite this, fix that line, quote the passage)
repeats long runs of tokens the model has already seen. When the last few
tokens of the reply occurred earlier in the prompt or the reply, the tokens that
followed them there are a cheap guess at what comes next. The engine verifies
the guess in one batch (app.runner.engine): the model samples each position as
it would have anyway, and the guess counts only as far as it agrees, so the
output is exactly what decoding one token at a time gives.

A guess that is wrong costs the batch's extra width, so the drafter learns per
request: it proposes more tokens after a fully accepted draft, fewer after a
partial one, and pauses after a draft that was refused outright.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: How many tokens must match to propose a draft: longer matches guess better, shorter ones resync sooner.
NGRAM_MAX, NGRAM_MIN = 4, 3
#: Tokens generated without drafting after a draft of which nothing was accepted.
PAUSE_AFTER_MISS = 8


@dataclass
class PromptLookup:
    """The n-gram index of one request's tokens (prompt, then reply) and its drafting state."""

    n_max: int  # the most tokens one draft may propose (0: never draft)
    n_min: int = 1  # fewer than this and there is no draft
    history: list[int] = field(default_factory=list)
    size: int = 2  # the next draft's length, adapted to how the last ones fared
    pause: int = 0
    drafted: int = 0
    accepted: int = 0
    _index: dict[tuple[int, ...], int] = field(default_factory=dict)  # n-gram -> where its latest follower is

    def __post_init__(self) -> None:
        tokens, self.history = self.history, []
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        """Tokens that are now part of the text: indexed by the n-grams that end just before each."""
        history, index = self.history, self._index
        for token in tokens:
            end = len(history)
            for n in range(NGRAM_MIN, NGRAM_MAX + 1):
                if end >= n:
                    index[tuple(history[end - n : end])] = end
            history.append(token)

    def budget(self, room: int) -> int:
        """How many tokens the next draft may have (0: none now), given `room` in the context and the batch."""
        if self.n_max <= 0 or room < self.n_min:
            return 0
        if self.pause > 0:
            self.pause -= 1
            return 0
        return min(self.size, room, self.n_max)

    def draft(self, room: int) -> list[int]:
        """Up to `room` tokens that may follow the text so far, by prompt lookup."""
        return self.match(self.budget(room))

    def match(self, size: int) -> list[int]:
        """Up to `size` tokens that followed the n-gram ending the text where it occurred before.

        The n-gram that ends the text is not indexed until the next token
        comes, so a match is always an earlier occurrence.
        """
        history = self.history
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1) if size else ():
            at = self._index.get(tuple(history[-n:])) if len(history) >= n else None
            if at is not None:
                out = history[at : at + size]
                return out if len(out) >= self.n_min else []
        return []

    def verified(self, proposed: int, accepted: int) -> None:
        """How a draft fared: the next one grows, shrinks or waits."""
        self.drafted += proposed
        self.accepted += accepted
        if accepted == proposed:
            self.size = min(self.size * 2, self.n_max)
        elif accepted == 0:
            self.size = 2
            self.pause = PAUSE_AFTER_MISS
        else:
            self.size = max(2, accepted + 1)
