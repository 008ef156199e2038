"""What to keep when a slot's context is too small: loam's prompt truncation and llama-server's context shift."""

from __future__ import annotations


def fit_prompt(prompt: list[int], n_keep: int, n_ctx: int, add_bos: bool) -> tuple[list[int], bool]:
    """A prompt too long for a slot, cut from the front in blocks after its first n_keep tokens; and whether it was."""
    if len(prompt) < n_ctx:
        return prompt, False
    keep = min(max(n_keep, 0) + int(add_bos), n_ctx // 2)
    block = (n_ctx - keep) // 2
    erased = (len(prompt) - keep - block) // block
    return prompt[:keep] + prompt[keep + erased * block :], True


def shift_span(n_past: int, n_prompt: int, n_keep: int, n_discard: int, n_ctx: int, add_bos: bool) -> tuple[int, int]:
    """llama-server's context shift: (tokens kept at the start, tokens dropped after them).

    n_keep -1 keeps the whole prompt; n_discard 0 drops half of what is not kept.
    """
    keep = n_prompt if n_keep < 0 else n_keep
    keep = max(0, min(n_ctx - 4, keep + int(add_bos)))
    n_left = n_past - keep
    drop = n_discard if n_discard > 0 else n_left // 2
    return keep, max(0, min(drop, n_left - 1))
