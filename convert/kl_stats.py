"""How far a quantized model's next-token distributions are from its reference's.

The definitions are llama.cpp's (`llama-perplexity --kl-divergence`), so our figures can be set
beside the ones users quote from it:
- the reference's log-probabilities are stored per position as 16-bit codes over the 16 nats below
  the top logit (a scale and an offset per position), which is what makes a 100-chunk reference
  fit on disk at a 152,064-token vocabulary;
- KL(reference ‖ level) sums, over the tokens whose stored reference log-probability is above
  -16, p_ref · (log p_ref − log p_level);
- "same top token" compares the level's argmax logit with the argmax of the stored reference;
- the negative log-likelihood of the actual next token under each gives both perplexities, and
  Δp is the difference of that token's probability (level − reference).
The work is vectorised over a whole chunk's scored positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LOG_PROB_FLOOR = -16.0  # nats below the top logit that the stored codes cover
CODES = 65535.0


@dataclass(frozen=True)
class ReferenceRows:
    """The reference's stored log-probabilities of some positions."""

    codes: np.ndarray  # (n, vocab) uint16
    scale: np.ndarray  # (n,) float32
    offset: np.ndarray  # (n,) float32: the log-probability that code 0 stands for

    def log_probs(self) -> np.ndarray:
        return self.codes.astype(np.float32) * self.scale[:, None] + self.offset[:, None]

    def nll(self, targets: np.ndarray) -> np.ndarray:
        """−log p of each row's actual next token, as stored."""
        picked = self.codes[np.arange(len(targets)), targets].astype(np.float32)
        return -(picked * self.scale + self.offset).astype(np.float64)


def encode_reference(logits: np.ndarray) -> ReferenceRows:
    """Log-softmax of each row of `logits`, as 16-bit codes (see the module docstring)."""
    logits = np.asarray(logits, dtype=np.float32)
    top = logits.max(axis=1)
    low = np.maximum(logits.min(axis=1), top - 16.0)
    log_sum_exp = _log_sum_exp(logits, top)
    offset = (low - top - log_sum_exp).astype(np.float32)
    scale = ((top - low) / np.float32(CODES)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    scaled = (logits - low[:, None]) * inverse[:, None]
    codes = np.where(logits > low[:, None], np.rint(scaled), 0)
    return ReferenceRows(np.clip(codes, 0, CODES).astype(np.uint16), scale, offset)


@dataclass(frozen=True)
class TokenComparison:
    """Per scored position: what the level did against the reference."""

    nll: np.ndarray  # float64: −log p_level(actual next token)
    nll_ref: np.ndarray  # float64
    kld: np.ndarray  # float64
    same_top: np.ndarray  # bool
    p_diff: np.ndarray  # float64: p_level − p_ref of the actual next token


def compare(logits: np.ndarray, reference: ReferenceRows, targets: np.ndarray) -> TokenComparison:
    logits = np.asarray(logits, dtype=np.float32)
    rows = np.arange(len(targets))
    top_index = logits.argmax(axis=1)
    top = logits[rows, top_index]
    log_norm = top + _log_sum_exp(logits, top)  # log Σ exp(logits)
    nll = (log_norm - logits[rows, targets]).astype(np.float64)
    ref_log_probs = reference.log_probs()
    nll_ref = -ref_log_probs[rows, targets].astype(np.float64)
    counted = ref_log_probs > LOG_PROB_FLOOR
    level_log_probs = logits - log_norm[:, None]
    terms = np.where(counted, np.exp(ref_log_probs) * (ref_log_probs - level_log_probs), 0.0)
    kld = terms.sum(axis=1, dtype=np.float64)
    same_top = top_index == ref_log_probs.argmax(axis=1)
    p_diff = np.exp(-nll) - np.exp(-nll_ref)
    return TokenComparison(nll, nll_ref, kld, same_top, p_diff)


def _log_sum_exp(logits: np.ndarray, top: np.ndarray) -> np.ndarray:
    sums = np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64)
    return np.log(sums).astype(np.float32)


# --- the summary ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityStats:
    tokens: int
    kld_mean: float
    kld_se: float
    kld_p99: float
    top1: float  # fraction 0–1
    top1_se: float
    ppl: float
    ppl_reference: float
    ln_ppl_ratio: float
    ln_ppl_ratio_se: float
    rms_dp: float  # fraction 0–1
    rms_dp_se: float

    @classmethod
    def from_tokens(cls, parts: list[TokenComparison]) -> QualityStats:
        nll = np.concatenate([p.nll for p in parts])
        nll_ref = np.concatenate([p.nll_ref for p in parts])
        kld = np.concatenate([p.kld for p in parts])
        same = np.concatenate([p.same_top for p in parts])
        p_diff = np.concatenate([p.p_diff for p in parts])
        n = len(nll)
        if n < 2:
            raise ValueError("at least two scored tokens are needed")
        log_ppl, log_ppl_se = _mean_and_se(nll)
        log_ppl_ref, log_ppl_ref_se = _mean_and_se(nll_ref)
        cov = _covariance(nll, nll_ref)
        ratio_var = log_ppl_se**2 + log_ppl_ref_se**2 - 2 * cov
        kld_mean, kld_se = _mean_and_se(kld)
        mse, mse_se = _mean_and_se(p_diff**2)
        rms = math.sqrt(mse)
        top1 = float(same.mean())
        return cls(
            tokens=n,
            kld_mean=kld_mean,
            kld_se=kld_se,
            kld_p99=float(np.percentile(kld, 99.0)),
            top1=top1,
            top1_se=math.sqrt(top1 * (1 - top1) / (n - 1)),
            ppl=math.exp(log_ppl),
            ppl_reference=math.exp(log_ppl_ref),
            ln_ppl_ratio=log_ppl - log_ppl_ref,
            ln_ppl_ratio_se=math.sqrt(max(ratio_var, 0.0)),
            rms_dp=rms,
            rms_dp_se=0.5 / rms * mse_se if rms > 0 else 0.0,
        )


def _mean_and_se(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    mean = float(values.mean())
    variance = float((values**2).mean()) - mean * mean
    se = math.sqrt(variance / (n - 1)) if variance > 0 and n > 10 else 0.0
    return mean, se


def _covariance(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    if n < 10:
        return 0.0
    return (float((a * b).mean()) - float(a.mean()) * float(b.mean())) / (n - 1)
