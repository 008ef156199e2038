"""Perplexity windows and statistics, as llama.cpp's llama-perplexity computes them.

Windows (tools/perplexity/perplexity.cpp, `perplexity`): the whole text is
tokenized once (with BOS when the model adds one) and cut into n_tokens // n_ctx
windows of n_ctx tokens. Each window's first token is replaced by BOS when the
model adds BOS. Only the second half is scored: with first = n_ctx // 2, the
tokens at positions first + 1 .. n_ctx - 1 (n_ctx - 1 - first of them), each
given every token before it in its window.

PPL = exp(mean NLL); its "+/-" is PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (N - 1)).

KL divergence (`kl_divergence`): per scored token, KLD(base || model) =
sum_v p_base(v) (log p_base(v) - log p_model(v)) over the tokens v whose base
log-probability is above -16 (llama.cpp's cut-off: its base file stores
log-probabilities of at most 16 below the top one). Means carry llama.cpp's
uncertainty sqrt(var / (N - 1)) (0 for 10 values or fewer); the median and
percentiles interpolate between sorted values as llama.cpp's do; "same top"
is the share of tokens where both models' most likely token is the same, with
sqrt(p (1 - p) / (N - 1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: llama.cpp skips base tokens less likely than this (log-probability) in the KLD sum.
KLD_CUTOFF = -16.0
_ROWS = 64  # rows of the vocabulary-wide arrays processed at once, to bound temporaries


def n_windows(n_tokens: int, n_ctx: int, chunks: int = 0) -> int:
    """How many windows llama-perplexity scores: n_tokens // n_ctx, or --chunks when fewer."""
    most = n_tokens // n_ctx
    return min(chunks, most) if chunks > 0 else most


def first_scored(n_ctx: int) -> int:
    """The index of a window's first scored token (the /score request's "from")."""
    return n_ctx // 2 + 1


def windows(tokens: Sequence[int], n_ctx: int, chunks: int = 0, bos: int | None = None) -> list[list[int]]:
    """The token windows, each starting with BOS when the model adds one."""
    out = []
    for i in range(n_windows(len(tokens), n_ctx, chunks)):
        window = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos is not None:
            window[0] = bos
        out.append(window)
    return out


def _mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """llama.cpp's `mean_and_uncertainty` of its KLD report."""
    if count < 1:
        return math.nan, math.nan
    mean = total / count
    var = total2 / count - mean * mean
    return mean, math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0


def _percentile(values: np.ndarray, fraction: float) -> float:
    """llama.cpp's percentile of sorted values: linear between the two nearest."""
    if fraction <= 0:
        return float(values[0])
    if fraction >= 1:
        return float(values[-1])
    p = fraction * (len(values) - 1)
    ip = int(p)
    p -= ip
    return float((1 - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)])


@dataclass
class Perplexity:
    """Running NLL sums over scored tokens; the PPL figure and its error from them."""

    count: int = 0
    nll: float = 0.0
    nll2: float = 0.0

    def add(self, logprobs: Sequence[float] | np.ndarray) -> None:
        values = -np.asarray(logprobs, dtype=np.float64)
        self.count += len(values)
        self.nll += float(values.sum())
        self.nll2 += float((values * values).sum())

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count) if self.count else math.nan

    @property
    def error(self) -> float:
        """The "+/-" of llama-perplexity's "Final estimate: PPL = x +/- y"."""
        if self.count < 2:
            return math.nan
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        return math.sqrt(var / (self.count - 1)) * self.ppl if var > 0 else 0.0


def token_logprobs(dist: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The log-probability of each row's actual next token."""
    return dist[np.arange(len(targets)), targets]


@dataclass
class Divergence:
    """llama.cpp's `kl_divergence_result` sums, plus every per-token KLD for the median and percentiles."""

    count: int = 0
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    same_top: int = 0
    values: list[np.ndarray] = field(default_factory=list)

    def add(self, base: np.ndarray, model: np.ndarray, targets: np.ndarray) -> None:
        """Rows of full log-probability distributions (base's and the model's) and the actual next tokens."""
        if base.shape != model.shape or base.shape[0] != len(targets):
            raise ValueError(f"distributions of shapes {base.shape} and {model.shape} for {len(targets)} tokens")
        for lo in range(0, len(targets), _ROWS):
            self._add(base[lo : lo + _ROWS], model[lo : lo + _ROWS], targets[lo : lo + _ROWS])

    def _add(self, base: np.ndarray, model: np.ndarray, targets: np.ndarray) -> None:
        nll = -token_logprobs(model, targets).astype(np.float64)
        nll_base = -token_logprobs(base, targets).astype(np.float64)
        terms = np.exp(base) * (base - model)
        kld = np.where(base > KLD_CUTOFF, terms, 0.0).sum(axis=1, dtype=np.float64)
        p_diff = np.exp(-nll) - np.exp(-nll_base)
        self.count += len(targets)
        self.sum_nll += float(nll.sum())
        self.sum_nll2 += float((nll * nll).sum())
        self.sum_nll_base += float(nll_base.sum())
        self.sum_nll_base2 += float((nll_base * nll_base).sum())
        self.sum_nll_nll_base += float((nll * nll_base).sum())
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        self.sum_p_diff += float(p_diff.sum())
        self.sum_p_diff2 += float((p_diff**2).sum())
        self.sum_p_diff4 += float((p_diff**4).sum())
        self.max_p_diff = max(self.max_p_diff, float(np.abs(p_diff).max(initial=0.0)))
        self.same_top += int((model.argmax(axis=1) == base.argmax(axis=1)).sum())
        self.values.append(kld.astype(np.float32))

    def figures(self) -> dict[str, float]:
        """The figures llama-perplexity --kl-divergence prints, under loam's names."""
        if self.count == 0:
            return {}
        log_ppl, log_ppl_err = _mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)
        log_base, log_base_err = _mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)
        cov = 0.0
        if self.count >= 10:
            cov = (self.sum_nll_nll_base / self.count - log_ppl * log_base) / (self.count - 1)
        ratio_log = log_ppl - log_base
        ratio_log_err = math.sqrt(max(0.0, log_ppl_err**2 + log_base_err**2 - 2.0 * cov))
        kld_mean, kld_err = _mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
        values = np.sort(np.concatenate(self.values))
        n = len(values)
        median = float(values[n // 2]) if n % 2 else float(0.5 * (values[n // 2] + values[n // 2 - 1]))
        mse, _ = _mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count)
        top = self.same_top / self.count
        top_err = math.sqrt(top * (1 - top) / (self.count - 1)) if self.count > 1 else 0.0
        ppl = math.exp(log_ppl)
        return {
            "ppl": ppl,
            "ppl_err": ppl * log_ppl_err,
            "ppl_base": math.exp(log_base),
            "ppl_ratio": math.exp(ratio_log),
            "ppl_ratio_err": math.exp(ratio_log) * ratio_log_err,
            "kld_mean": kld_mean,
            "kld_err": kld_err,
            "kld_median": median,
            "kld_p99": _percentile(values, 0.99),
            "kld_max": float(values[-1]),
            "same_top": 100.0 * top,
            "same_top_err": 100.0 * top_err,
            "dp_rms": 100.0 * math.sqrt(max(0.0, mse)),
            "tokens_scored": self.count,
        }
