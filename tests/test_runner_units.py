"""The runner's pure parts: text held until safe to send, the saved-state LRU, request fields."""

from __future__ import annotations

import asyncio
from typing import Any

import llama_cpp as llama
import pytest

from app.runner.cache import SavedState, StateCache, common_prefix
from app.runner.gather import Gatherer
from app.runner.model import flash_attn_type
from app.runner.options import parse_args
from app.runner.sampling import SamplingParams
from app.runner.text import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.feed(p) for p in pieces]


def test_a_character_split_across_tokens_is_sent_whole() -> None:
    euro = "€".encode()  # three bytes
    stream = TextStream([])
    out = feed_all(stream, [b"price ", euro[:1], euro[1:2], euro[2:] + b"5"])
    assert out == ["price ", "", "", "€5"]
    assert all("\ufffd" not in part for part in out)


def test_an_unfinished_character_at_the_end_is_dropped() -> None:
    stream = TextStream([])
    assert stream.feed(b"ok") == "ok"
    assert stream.feed(b"\xe2\x82") == ""
    assert stream.flush() == ""


def test_invalid_bytes_mid_reply_become_a_replacement() -> None:
    stream = TextStream([])
    assert stream.feed(b"a\xffb") == "a\ufffdb"
    assert stream.flush() == ""


def test_text_that_may_start_a_stop_string_is_held() -> None:
    stream = TextStream(["<|end|>"])
    assert stream.feed(b"Hello <") == "Hello "
    assert stream.feed(b"|en") == ""
    assert stream.feed(b"d|> more") == ""
    assert stream.stopped_by == "<|end|>"


def test_held_text_is_released_when_it_is_not_a_stop() -> None:
    stream = TextStream(["<|end|>"])
    assert stream.feed(b"a <|") == "a "
    assert stream.feed(b"x") == "<|x"
    assert stream.stopped_by is None
    assert stream.feed(b" <") == " "
    assert stream.flush() == "<"


def test_a_stop_string_inside_one_piece_cuts_there() -> None:
    stream = TextStream(["STOP", "END"])
    assert stream.feed(b"abcENDdef") == "abc"
    assert stream.stopped_by == "END"


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix((1, 2), [1, 2, 3]) == 2


def test_state_cache_finds_the_longest_prefix_and_evicts_least_recent() -> None:
    cache = StateCache(max_bytes=100)
    cache.put(SavedState((1, 2, 3), b"a" * 40))
    cache.put(SavedState((7, 8), b"b" * 40))
    state, n = cache.best([1, 2, 3, 4])
    assert state is not None and state.tokens == (1, 2, 3) and n == 3
    cache.put(SavedState((9,), b"c" * 40))  # 120 bytes: the oldest goes
    assert cache.best([1, 2, 3])[0] is None
    assert cache.bytes == 80 and len(cache) == 2


def test_state_cache_replaces_a_saved_prefix_with_its_continuation() -> None:
    cache = StateCache(max_bytes=1000)
    cache.put(SavedState((1, 2), b"x" * 10))
    cache.put(SavedState((1, 2, 3, 4), b"y" * 20))
    assert len(cache) == 1 and cache.bytes == 20
    state, _ = cache.best([1, 2, 3, 4, 5])
    assert state is not None
    cache.take(state)
    assert len(cache) == 0 and cache.hits == 1


def test_state_cache_ignores_states_bigger_than_its_budget() -> None:
    cache = StateCache(max_bytes=10)
    cache.put(SavedState((1,), b"z" * 11))
    assert len(cache) == 0


def test_sampling_params_from_json() -> None:
    params = SamplingParams.from_json({"temperature": 0, "stop": "END", "n_predict": 8.0, "seed": 3, "extra": 1})
    assert params.temperature == 0.0 and params.stop == ["END"] and params.n_predict == 8 and params.seed == 3
    assert SamplingParams.from_json({"max_tokens": 5}).n_predict == 5
    with pytest.raises(ValueError, match="top_k must be a finite number"):
        SamplingParams.from_json({"top_k": "many"})
    with pytest.raises(ValueError, match="stop must be"):
        SamplingParams.from_json({"stop": [1]})


def test_runner_flags_are_llama_servers() -> None:
    opts = parse_args(
        ["-m", "m.gguf", "-c", "2048", "-np", "4", "-ngl", "99", "-t", "2", "-fa", "--kv-cache-type", "q8_0",
         "--tensor-split", "3,1", "--no-mmap", "--embedding", "--port", "9000"]
    )  # fmt: skip
    assert (opts.ctx_size, opts.parallel, opts.n_gpu_layers, opts.threads) == (2048, 4, 99, 2)
    assert opts.flash_attn == "on" and opts.kv_cache_type == "q8_0" and opts.tensor_split == [3.0, 1.0]
    assert opts.load_mode == "none" and opts.embedding and opts.port == 9000 and opts.host == "127.0.0.1"


def test_the_v_cache_type_follows_k_unless_named() -> None:
    assert parse_args(["-m", "m.gguf", "-ctk", "q8_0"]).kv_cache_type_v == ""
    both = parse_args(["-m", "m.gguf", "--cache-type-k", "q8_0", "--cache-type-v", "q4_0"])
    assert (both.kv_cache_type, both.kv_cache_type_v) == ("q8_0", "q4_0")
    with pytest.raises(SystemExit) as bad:
        parse_args(["-m", "m.gguf", "-ctv", "q9_9"])
    assert bad.value.code == 2


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], llama.LLAMA_FLASH_ATTN_TYPE_AUTO),  # llama.cpp's rule: a cached prompt reads as a fresh one
        (["-np", "4"], llama.LLAMA_FLASH_ATTN_TYPE_AUTO),  # several: same output whatever the batch
        (["-ngl", "99"], llama.LLAMA_FLASH_ATTN_TYPE_AUTO),
        (["--kv-cache-type", "q8_0"], llama.LLAMA_FLASH_ATTN_TYPE_AUTO),  # a quantized V cache needs it
        (["-fa", "on"], llama.LLAMA_FLASH_ATTN_TYPE_ENABLED),
        (["-fa", "off", "-ngl", "99"], llama.LLAMA_FLASH_ATTN_TYPE_DISABLED),
    ],
)
def test_flash_attention_auto_is_off_for_one_cpu_slot(flags: list[str], expected: int) -> None:
    assert flash_attn_type(parse_args(["-m", "m.gguf", *flags])) == expected


def test_the_warm_up_decode_leaves_nothing_behind(tiny_gguf, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like llama-server, the runner decodes a token or two at load, in warm-up mode; the cache starts empty."""
    from app.runner import model as model_module

    calls: list[tuple[int, int]] = []
    decode, set_warmup = model_module.llama.llama_decode, model_module.llama.llama_set_warmup
    warm = [False]

    def spy_decode(ctx, batch):  # the real decode, counted
        calls.append((batch.n_tokens, warm[0]))
        return decode(ctx, batch)

    def spy_warmup(ctx, value):
        warm[0] = bool(value)
        return set_warmup(ctx, value)

    monkeypatch.setattr(model_module.llama, "llama_decode", spy_decode)
    monkeypatch.setattr(model_module.llama, "llama_set_warmup", spy_warmup)
    model = model_module.Model(parse_args(["--model", str(tiny_gguf), "--ctx-size", "256", "--threads", "1"]))
    try:
        assert calls == [(2, True)] and not warm[0]
        assert llama.llama_memory_seq_pos_max(model.memory, 0) == -1
    finally:
        model.close()


def test_llama_server_command_lines_parse_as_llama_server_reads_them() -> None:
    opts = parse_args(
        ["--model", "m.gguf", "--temp", "0.8", "--seed", "42", "--no-slots", "--alias", "b,a", "--n-predict", "64",
         "--no-jinja", "--offline", "--backend_sampling", "--ubatch_size", "128", "--kv-unified", "--metrics",
         "--api-key", "k1,k2", "--host", "127.0.0.1,::1", "--tags", "chat"]
    )  # fmt: skip
    assert (opts.temperature, opts.seed, opts.n_predict, opts.ubatch_size) == (0.8, 42, 64, 128)
    assert not opts.slots and opts.metrics and opts.kv_unified and not opts.ctx_shift
    assert opts.aliases == ["b", "a"] and opts.model_name == "a" and opts.api_keys == ["k1", "k2"]
    assert parse_args(["-m", "dir/m.gguf"]).model_name == "m.gguf" and parse_args(["-m", "m.gguf"]).slots
    with pytest.raises(SystemExit):
        parse_args(["-m", "m.gguf", "--ctx"])  # no abbreviations: llama-server takes exact names only


@pytest.mark.parametrize(
    ("n_past", "n_prompt", "n_keep", "n_discard", "expected"),
    [
        (255, 10, 0, 0, (0, 127)),  # keep nothing, drop half
        (255, 10, -1, 0, (10, 122)),  # keep the prompt
        (255, 10, 4, 50, (4, 50)),
        (255, 10, 4, 9999, (4, 250)),  # never everything after the kept part
        (255, 300, -1, 0, (252, 1)),  # at most n_ctx - 4 kept
    ],
)
def test_the_context_shift_keeps_and_drops_as_llama_server(n_past, n_prompt, n_keep, n_discard, expected) -> None:
    from app.runner.context import shift_span

    assert shift_span(n_past, n_prompt, n_keep, n_discard, 256, add_bos=False) == expected


def test_a_truncated_prompt_keeps_its_start_and_fits() -> None:
    from app.runner.context import fit_prompt

    prompt = list(range(1000))
    cut, truncated = fit_prompt(prompt, 4, 256, add_bos=True)
    assert truncated and len(cut) < 256 and cut[:5] == prompt[:5] and cut[-1] == 999
    assert fit_prompt(prompt[:100], 4, 256, add_bos=True) == (prompt[:100], False)


def _token(i: int) -> dict[str, Any]:
    probs = [{"id": i}]
    return {"content": f"t{i} ", "tokens": [i], "stop": False, "tokens_predicted": i, "completion_probabilities": probs}


def test_a_gatherer_sends_a_first_token_at_once_the_rest_of_its_interval_together_and_the_end_unheld() -> None:
    async def run() -> None:
        woken: list[int] = []
        gather = Gatherer(60.0, lambda: woken.append(1))  # the test calls flush itself, as the timer would
        progress = {"content": "", "tokens": [], "stop": False, "prompt_progress": {"processed": 3}}
        assert gather.take(progress) == [progress]
        assert gather.take(_token(1)) == [_token(1)]
        assert gather.take(_token(2)) == [] and gather.take(_token(3)) == []
        probs = [{"id": 2}, {"id": 3}]
        joined = {**_token(3), "content": "t2 t3 ", "tokens": [2, 3], "completion_probabilities": probs}
        assert gather.flush() == [joined]
        assert gather.take(_token(4)) == []  # that flush began an interval
        assert gather.flush() == [_token(4)]
        assert gather.flush() == []  # a quiet interval: the next token goes at once
        assert gather.take(_token(5)) == [_token(5)]
        assert gather.take(_token(6)) == []
        stop = {"content": "", "tokens": [], "stop": True, "stop_type": "limit"}
        assert gather.take(stop) == [_token(6), stop]  # the last tokens go with the end, not after the interval
        assert woken == []

    asyncio.run(run())


def test_a_gatherers_interval_ends_by_its_timer() -> None:
    async def run() -> list[dict[str, Any]]:
        ended = asyncio.Event()
        gather = Gatherer(0.01, ended.set)
        assert gather.take(_token(1)) == [_token(1)]
        assert gather.take(_token(2)) == []
        await asyncio.wait_for(ended.wait(), 30)
        return gather.flush()

    assert asyncio.run(run()) == [_token(2)]


@pytest.mark.parametrize("value", [-0.1, 1.5, "soon", float("inf")])
def test_a_stream_interval_out_of_range_is_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="stream_interval must be"):
        SamplingParams.from_json({"stream_interval": value})
