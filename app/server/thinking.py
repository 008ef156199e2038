"""Separating a reasoning model's `<think>...</think>` section from its answer.

Models such as Qwen3 and DeepSeek-R1 open their reply with a thinking section.
Ollama returns it apart, as `thinking`, and so does loam. Only a section at the
very start of the output counts (after optional whitespace); a `<think>` later
in the text is part of the answer. Whitespace just inside the tags and between
`</think>` and the answer is dropped, as Ollama does.
"""

from __future__ import annotations

_WS = " \t\r\n"
_LOOKING, _THINK_START, _THINKING, _AFTER, _CONTENT = range(5)


class ThinkingSplitter:
    """Separates a <think>...</think> section from streamed text, tags split across chunks included."""

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>", started: bool = False) -> None:
        """`started` says the prompt already ended with the open tag, so the output begins inside the section."""
        self.open_tag, self.close_tag = open_tag, close_tag
        self._state = _THINK_START if started else _LOOKING
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Take the next chunk; return the (thinking, content) that can be released now.

        Text that might still turn out to be part of a tag, or whitespace that
        might still be trimmed, is held back until the next chunk or `flush`.
        """
        buf, thinking, content = self._held + text, "", ""
        while True:
            if self._state == _LOOKING:
                rest = buf.lstrip(_WS)
                if rest.startswith(self.open_tag):
                    buf, self._state = rest[len(self.open_tag) :], _THINK_START
                    continue
                if not self.open_tag.startswith(rest):
                    content, buf, self._state = buf, "", _CONTENT
                break
            if self._state == _THINK_START:
                buf = buf.lstrip(_WS)
                if not buf:
                    break
                self._state = _THINKING
            if self._state == _THINKING:
                end = buf.find(self.close_tag)
                if end >= 0:
                    thinking += buf[:end].rstrip(_WS)
                    buf, self._state = buf[end + len(self.close_tag) :], _AFTER
                    continue
                keep = _partial_suffix(buf, self.close_tag)
                released = buf[: len(buf) - keep].rstrip(_WS)
                thinking, buf = thinking + released, buf[len(released) :]
                break
            if self._state == _AFTER:
                buf = buf.lstrip(_WS)
                if buf:
                    self._state = _CONTENT
            if self._state == _CONTENT:
                content, buf = content + buf, ""
            break
        self._held = buf
        return thinking, content

    def flush(self) -> tuple[str, str]:
        """The end of the output: release whatever is still held back."""
        held, self._held = self._held, ""
        if self._state == _LOOKING:
            self._state = _CONTENT
            return "", held
        if self._state == _THINKING:
            return held.rstrip(_WS), ""
        return "", held if self._state == _CONTENT else ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def split_thinking(text: str, started: bool = False) -> tuple[str, str]:
    """Whole text → (thinking, content); content has leading whitespace after </think> stripped.

    With no closing tag everything after the opening one is thinking, as it is
    when a reply is cut short while the model is still reasoning.
    """
    open_tag, close_tag = "<think>", "</think>"
    if not started:
        rest = text.lstrip(_WS)
        if not rest.startswith(open_tag):
            return "", text
        text = rest[len(open_tag) :]
    end = text.find(close_tag)
    if end < 0:
        return text.strip(_WS), ""
    return text[:end].strip(_WS), text[end + len(close_tag) :].lstrip(_WS)


def prompt_opens_thinking(prompt: str, open_tag: str = "<think>") -> bool:
    """Whether a rendered prompt ends inside an opened think section (a template that appends "<think>\\n")."""
    return prompt.rstrip(_WS).endswith(open_tag)
