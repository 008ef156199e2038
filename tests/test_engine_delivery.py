"""The decode loop in process, on the tiny model: how chunks reach the HTTP side, and when it drafts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.runner import engine as engine_module
from app.runner.engine import Engine
from app.runner.lookup import PromptLookup
from app.runner.model import Model
from app.runner.options import parse_args
from app.runner.sampling import SamplingParams
from app.runner.slot import Chunk, Request, Slot


@pytest.fixture(scope="module")
def model(tiny_gguf: Path) -> Iterator[Model]:
    m = Model(parse_args(["--model", str(tiny_gguf), "--ctx-size", "512", "--parallel", "2", "--threads", "1"]))
    yield m
    m.close()


class LoopThread:
    """An asyncio loop on a thread of its own, standing for the runner's HTTP side."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_a_steps_chunks_reach_the_event_loop_together(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    http = LoopThread()
    handovers: list[int] = []
    hand_over = engine_module._hand_over

    def counted(group: list[tuple[Request, Chunk]], done: threading.Event | None) -> None:
        handovers.append(len(group))
        hand_over(group, done)

    monkeypatch.setattr(engine_module, "_hand_over", counted)
    engine = Engine(model, 0)
    engine.start()
    received: dict[int, list[Chunk]] = {0: [], 1: []}
    threads: dict[int, set[str]] = {0: set(), 1: set()}
    finished = [threading.Event(), threading.Event()]

    def emit_for(i: int):
        def emit(chunk: Chunk) -> None:
            threads[i].add(threading.current_thread().name)
            received[i].append(chunk)
            if chunk.get("stop"):
                finished[i].set()

        return emit

    try:
        params = SamplingParams.from_json({"n_predict": 24, "temperature": 0, "ignore_eos": True})
        for i in (0, 1):
            tokens = model.tokenize(f"request {i}: the same words again and again")
            http.loop.call_soon_threadsafe(engine.submit, Request(tokens, params, emit_for(i), http.loop))
        assert all(f.wait(60) for f in finished)
    finally:
        engine.stop()
        http.close()
    for i in (0, 1):
        assert threads[i] == {http.thread.name}, "chunks are handed over on the HTTP side's loop"
        tokens = [t for c in received[i] for t in c.get("tokens", []) if not c.get("stop")]
        assert len(tokens) == 24 and received[i][-1]["stop"] is True
    assert handovers.count(2) >= 20, f"the two streams' tokens of one step travel in one call: {handovers}"
    assert len(handovers) < sum(len(r) for r in received.values())


def test_drafts_only_for_a_lone_stream_on_the_cpu(model: Model) -> None:
    engine = Engine(model, 0)
    assert engine.draft_lone_only
    slot = Slot(0)
    pattern = [11, 12, 13, 14, 15, 16]
    slot.lookup = PromptLookup(8, 1, pattern * 4)
    slot.request = Request([1], SamplingParams.from_json({"n_predict": 100}), lambda c: None)
    slot.tokens = [0] * 10
    assert engine._draft(slot, 11, others=1, lone=False) == []
    slot.lookup = PromptLookup(8, 1, pattern * 4)
    assert engine._draft(slot, 11, others=0, lone=True)[:2] == [12, 13]


def test_greedy_by_argmax_picks_what_the_greedy_chain_picks(model: Model) -> None:
    """The argmax shortcut and llama.cpp's own greedy chain agree, banned (ignore_eos) tokens included."""
    import llama_cpp as llama

    from app.runner.sampling import Sampler

    tokens = model.tokenize("one two three four five six seven")
    array = (llama.llama_token * len(tokens))(*tokens)
    llama.llama_memory_clear(model.memory, True)
    batch = llama.llama_batch_get_one(array, len(tokens))
    assert llama.llama_decode(model.ctx, batch) == 0
    logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(model.ctx, -1), shape=(model.n_vocab,))
    top = [int(t) for t in np.argsort(-logits)[:3]]
    greedy = SamplingParams.from_json({"temperature": 0})
    for banned in ([], [top[0]], top[:2]):
        fast = Sampler(greedy, model.vocab, model.n_vocab, banned)
        chain = Sampler(greedy, model.vocab, model.n_vocab, banned)
        chain.argmax = False
        try:
            assert fast.argmax
            picked = fast.sample(model.ctx, -1)
            assert picked == chain.sample(model.ctx, -1) == top[len(banned)]
        finally:
            fast.close()
            chain.close()
    llama.llama_memory_clear(model.memory, True)
