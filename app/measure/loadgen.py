"""The client side of `loam bench`: the three wire protocols, unique prompts, closed-loop levels and their figures.

A level runs `concurrency` clients at once; each sends a request, reads its
stream to the end and sends the next, until the level's request budget or time
limit is spent (closed loop: the offered load is exactly `concurrency` streams).
Every request gets a prompt of its own, random from its first word, so no
prompt cache can make time to first token look better than it is.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

#: Connecting must be quick; a read may wait through a model load or a long prompt.
TIMEOUT = httpx.Timeout(30.0, read=None)

#: Common short words, most of them one token in any tokenizer; prompts are drawn from them.
WORDS = (
    "apple river stone cloud green table window garden silver paper orange winter summer mountain forest "
    "ocean candle bridge castle dragon engine feather guitar harbor island jacket kettle ladder marble needle "
    "pencil quilt rabbit saddle tunnel umbrella valley wagon yellow zebra anchor basket carpet desert elbow "
    "fabric glass hammer iron jungle kitten lemon magnet napkin olive pepper rocket salad tiger velvet walnut "
    "bottle button camera copper cotton dinner doctor empty family farmer finger flower friend garlic ginger "
    "honey hunter insect letter market meadow metal mirror monkey morning music nature number parrot pillow "
    "planet pocket potato powder prison pump puzzle radio record ribbon school screen shadow shelter signal "
    "sister socket spider spring square stable summit sunset sweater temple thunder ticket timber tomato "
    "tower travel turkey turtle violin volcano wallet water weather wheel whistle winner wizard wool yard "
    "bread chair clock coin crown dream earth field flame ghost grape heart horse house juice knife light "
    "money night paint plant queen river sheep shirt snake spoon storm sugar sword train truck voice whale"
).split()


def make_prompt(units: int, rng: random.Random) -> str:
    """A numbered list of random word pairs: unique from its first word, and a pattern a model keeps extending.

    The list never ends in the prompt, so stopping early (an end-of-text token)
    is unlikely where the server cannot be told to ignore it.
    """
    return "".join(f"{rng.choice(WORDS)} {rng.choice(WORDS)} {i}\n" for i in range(1, units + 1))


class ProtocolError(Exception):
    """The server answered with an error or something that is not its protocol; the message says which."""


@dataclass
class Event:
    """One parsed line of a stream: generated text arrived (`tokens` chunks of it), and/or the server's counts."""

    text: bool = False
    end: bool = False
    prompt_tokens: int | None = None
    gen_tokens: int | None = None


# -- the three APIs ------------------------------------------------------------------------------------------------


class Api(ABC):
    """How one server family is asked for a streamed completion and how its stream reads."""

    name = ""
    sse = False

    @abstractmethod
    def request(self, model: str, prompt: str, gen: int, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The path and body of a streamed request for `gen` tokens."""

    @abstractmethod
    def parse(self, line: str) -> Event | None:
        """What one line of the stream says; None for lines that carry nothing."""

    @abstractmethod
    async def count_tokens(self, http: httpx.AsyncClient, model: str, text: str, options: dict[str, Any]) -> int:
        """The server's own token count of a prompt."""


def _json(line: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except ValueError:
        raise ProtocolError(f"the server sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(item, dict):
        raise ProtocolError(f"the server sent {line[:80]!r}, not a JSON object")
    error = item.get("error")
    if error:
        raise ProtocolError(str(error.get("message", error) if isinstance(error, dict) else error))
    return item


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


async def _post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(path, json=body)
    if response.status_code >= 400:
        raise ProtocolError(f"{path} answered {response.status_code}: {_error_text(response.content)}")
    return _json(response.text)


def _error_text(body: bytes) -> str:
    text = body.decode(errors="replace").strip()
    try:
        item = json.loads(text)
        error = item.get("error", text) if isinstance(item, dict) else text
        text = str(error.get("message", error) if isinstance(error, dict) else error)
    except ValueError:
        pass
    return text[:200] or "no message"


class OllamaApi(Api):
    """Ollama's /api/generate, raw (no template), NDJSON; eval_count and prompt_eval_count in the last line."""

    name = "ollama"

    def request(self, model: str, prompt: str, gen: int, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        body = {"model": model, "prompt": prompt, "raw": True, "stream": True}
        return "/api/generate", body | {"options": {**options, "num_predict": gen, "ignore_eos": True}}

    def parse(self, line: str) -> Event | None:
        if not line.strip():
            return None
        item = _json(line)
        text = bool(item.get("response") or item.get("thinking"))
        if item.get("done"):
            return Event(text, True, _int(item.get("prompt_eval_count")), _int(item.get("eval_count")))
        return Event(text)

    async def count_tokens(self, http: httpx.AsyncClient, model: str, text: str, options: dict[str, Any]) -> int:
        body = {"model": model, "prompt": text, "raw": True, "stream": False, "options": {**options, "num_predict": 1}}
        count = _int((await _post(http, "/api/generate", body)).get("prompt_eval_count"))
        if not count:
            raise ProtocolError("the server did not report prompt_eval_count; is it an Ollama server?")
        return count


class OpenAIApi(Api):
    """OpenAI's /v1/completions streamed as SSE, with usage asked for in the last chunk."""

    name = "openai"
    sse = True

    def request(self, model: str, prompt: str, gen: int, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        body = {"model": model, "prompt": prompt, "max_tokens": gen, "stream": True, "ignore_eos": True}
        return "/v1/completions", body | {"stream_options": {"include_usage": True}}

    def parse(self, line: str) -> Event | None:
        line = line.strip()
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            return Event(end=True)
        item = _json(data)
        choices = item.get("choices") or []
        text = any(isinstance(c, dict) and c.get("text") for c in choices)
        usage = item.get("usage") or {}
        if usage:
            return Event(text, False, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
        return Event(text)

    async def count_tokens(self, http: httpx.AsyncClient, model: str, text: str, options: dict[str, Any]) -> int:
        body = {"model": model, "prompt": text, "max_tokens": 1, "stream": False}
        count = _int(((await _post(http, "/v1/completions", body)).get("usage") or {}).get("prompt_tokens"))
        if not count:
            raise ProtocolError("the server did not report usage.prompt_tokens; is it an OpenAI-compatible server?")
        return count


class LlamaServerApi(Api):
    """llama-server's /completion streamed as SSE (`data:` lines); timings in the chunk with stop true."""

    name = "llama-server"
    sse = True

    def request(self, model: str, prompt: str, gen: int, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        body = {"prompt": prompt, "n_predict": gen, "ignore_eos": True, "stream": True, "cache_prompt": True}
        return "/completion", body

    def parse(self, line: str) -> Event | None:
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        elif not line.startswith("{"):
            return None  # a blank line or an SSE comment (": progress")
        item = _json(line)
        text = bool(item.get("content"))
        if item.get("stop"):
            timings = item.get("timings") or {}
            prompt = _int(timings.get("prompt_n"))
            if prompt is None:
                prompt = _int(item.get("tokens_evaluated"))
            return Event(text, True, prompt, _int(timings.get("predicted_n")) or _int(item.get("tokens_predicted")))
        return Event(text)

    async def count_tokens(self, http: httpx.AsyncClient, model: str, text: str, options: dict[str, Any]) -> int:
        tokens = (await _post(http, "/tokenize", {"content": text, "add_special": True})).get("tokens")
        if not isinstance(tokens, list):
            raise ProtocolError("/tokenize did not answer a token list; is it a llama-server?")
        return len(tokens)


APIS: dict[str, type[Api]] = {"ollama": OllamaApi, "openai": OpenAIApi, "llama-server": LlamaServerApi}


# -- one request ---------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """What one request did: when it started, when each piece of generated text arrived, the server's counts."""

    started: float
    prompt_tokens: int = 0  # the server's count, else the calibrated estimate
    arrivals: list[float] = field(default_factory=list)
    gen_reported: int | None = None
    ended: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.ended is not None and self.error is None

    @property
    def gen_tokens(self) -> int:
        """Generated tokens: the server's figure where it gave one, else the chunks of text that arrived."""
        return self.gen_reported if self.gen_reported is not None else len(self.arrivals)

    @property
    def ttft(self) -> float | None:
        return self.arrivals[0] - self.started if self.arrivals else None

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]

    def decode_rate(self) -> float | None:
        """Tokens per second after the first one (which the prompt's evaluation produced)."""
        if len(self.arrivals) < 2 or self.gen_tokens < 2:
            return None
        span = self.arrivals[-1] - self.arrivals[0]
        return (self.gen_tokens - 1) / span if span > 0 else None


async def send(
    http: httpx.AsyncClient, api: Api, model: str, prompt: str, gen: int, options: dict[str, Any], sample: Sample
) -> None:
    """Stream one completion into `sample`; a failure is recorded in it, never raised (cancellation excepted)."""
    path, body = api.request(model, prompt, gen, options)
    headers = {"Accept": "text/event-stream"} if api.sse else {}
    try:
        async with http.stream("POST", path, json=body, headers=headers) as response:
            if response.status_code >= 400:
                raise ProtocolError(f"{response.status_code}: {_error_text(await response.aread())}")
            async for line in response.aiter_lines():
                event = api.parse(line)
                if event is None:
                    continue
                now = time.perf_counter()
                if event.text:
                    sample.arrivals.append(now)
                if event.prompt_tokens:
                    sample.prompt_tokens = event.prompt_tokens
                if event.gen_tokens is not None:
                    sample.gen_reported = event.gen_tokens
                if event.end:
                    break
        sample.ended = time.perf_counter()
        if not sample.arrivals:
            sample.error = "the server generated no text"
    except ProtocolError as e:
        sample.error = str(e)
    except httpx.HTTPError as e:
        sample.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# -- a level -------------------------------------------------------------------------------------------------------


@dataclass
class Level:
    """One concurrency level while it runs and after: its samples, wall time and whether it was cut short."""

    concurrency: int
    total: int
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    wall: float = 0.0
    timed_out: bool = False

    @property
    def done(self) -> int:
        return sum(1 for s in self.samples if s.ok)

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if s.error is not None]


async def run_level(
    http: httpx.AsyncClient,
    api: Api,
    model: str,
    prompts: Callable[[], str],
    gen: int,
    options: dict[str, Any],
    level: Level,
    time_limit: float,
    prompt_estimate: int,
) -> None:
    """Run `level.concurrency` closed-loop clients until `level.total` requests or `time_limit` seconds.

    Requests still streaming at the time limit are cancelled: they count as
    neither done nor errors, but the tokens they streamed count towards the
    level's aggregate throughput.
    """
    level.started = time.perf_counter()
    issued = 0

    async def client() -> None:
        nonlocal issued
        while issued < level.total:
            issued += 1
            sample = Sample(time.perf_counter(), prompt_estimate)
            level.samples.append(sample)
            await send(http, api, model, prompts(), gen, options, sample)

    tasks = [asyncio.create_task(client()) for _ in range(level.concurrency)]
    try:
        _, pending = await asyncio.wait(tasks, timeout=time_limit)
        level.timed_out = bool(pending)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ends = [s.ended for s in level.samples if s.ended is not None]
        level.wall = (max(ends) if ends and not level.timed_out else time.perf_counter()) - level.started


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linearly interpolated as numpy's default does; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def figures(level: Level, slots: int | None) -> dict[str, Any]:
    """A level's figures: latencies in ms, rates in tokens per second; None where nothing measured it."""
    ok = [s for s in level.samples if s.ok]
    ttfts = [t for s in ok if (t := s.ttft) is not None]
    gaps = [g * 1000 for s in ok for g in s.gaps()]
    rates = [r for s in ok if (r := s.decode_rate()) is not None]
    streamed = sum(s.gen_tokens for s in level.samples if s.error is None)
    prompt_tokens = sum(s.prompt_tokens for s in ok)
    return {
        "concurrency": level.concurrency,
        "slots": slots,
        "requests": len(ok),
        "errors": len(level.errors),
        "cut": sum(1 for s in level.samples if s.ended is None and s.error is None),
        "ttft_p50_ms": _round(percentile([t * 1000 for t in ttfts], 50)),
        "ttft_p95_ms": _round(percentile([t * 1000 for t in ttfts], 95)),
        "itl_p50_ms": _round(percentile(gaps, 50), 2),
        "itl_p95_ms": _round(percentile(gaps, 95), 2),
        "stream_tps": _round(sum(rates) / len(rates) if rates else None),
        "aggregate_tps": _round(streamed / level.wall if level.wall > 0 and streamed else None),
        "prompt_tps": _round(prompt_tokens / sum(ttfts) if ttfts and sum(ttfts) > 0 else None),
        "prompt_tokens": round(prompt_tokens / len(ok)) if ok else None,
        "gen_tokens": _round(sum(s.gen_tokens for s in ok) / len(ok) if ok else None),
        "wall_s": round(level.wall, 2),
    }


async def calibrate(
    http: httpx.AsyncClient, api: Api, model: str, target: int, options: dict[str, Any], rng: random.Random
) -> tuple[int, int]:
    """How many list lines make a prompt of about `target` tokens, and the tokens that many make on average.

    A first count on a prompt of about half the target (so it fits the context)
    gives tokens per line; three more at that estimate correct it for longer
    line numbers and average out the random words (a prompt varies by ~2%).
    """
    units = max(1, target // 10)
    count = await api.count_tokens(http, model, make_prompt(units, rng), options)
    units = max(1, round(units * target / max(count, 1)))
    counts = [await api.count_tokens(http, model, make_prompt(units, rng), options) for _ in range(3)]
    mean = sum(counts) / len(counts)
    final = max(1, round(units * target / mean))
    return final, max(1, round(mean * final / units))
