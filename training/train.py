"""Trains fathom-tiny from scratch; writes the checkpoint the app ships in resources/fathom-tiny/.

    .venv/bin/pip install torch==2.13.0        # the [train] extra; never needed by the app
    PYTHONPATH=. .venv/bin/python -m training.train --out resources/fathom-tiny

Everything is seeded (corpus, tokenizer input, initial weights, batch order), so a rerun on the
same library versions reproduces the run; training/README.md records the measured run time.
Checkpoints go to --workdir every --save-every steps, and --resume continues from the latest.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.chat_format import BOS, EOS, transcript
from training.corpus import problems
from training.model import Qwen2ForCausalLM, TinyConfig
from training.safetensors_io import write_bf16
from training.tokenizer import tokenizer_config, train_tokenizer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
R1_TOKENIZER_CONFIG = (
    PROJECT_ROOT / "tests" / "fixtures" / "r1-distill-qwen-tokenizer" / "tokenizer_config.json"
)
TRAIN_SEED = 1234
MAX_TOKENS = 384  # longest training sequence kept; single problems need at most ~360
TWO_TURN_SHARE = 0.08  # samples that carry an earlier finished exchange, as a chat continues


@dataclass(frozen=True)
class RunSettings:
    steps: int
    batch_tokens: int
    lr: float
    warmup: int
    samples: int
    seed: int


def build_data(
    settings: RunSettings,
) -> tuple[object, list[tuple[list[int], list[int]]]]:
    rng = random.Random(settings.seed)
    stream = problems(settings.seed, held_out=False)
    texts = []
    for _ in range(settings.samples):
        current = next(stream)
        earlier = next(stream) if rng.random() < TWO_TURN_SHARE else None
        texts.append(transcript(current, rng, earlier))
    tokenizer = train_tokenizer(t.prompt + t.completion for t in texts[:20000])
    prompts = tokenizer.encode_batch([t.prompt for t in texts], add_special_tokens=False)
    completions = tokenizer.encode_batch([t.completion for t in texts], add_special_tokens=False)
    pairs = [
        (p.ids, c.ids)
        for p, c in zip(prompts, completions, strict=True)
        if len(p.ids) + len(c.ids) <= MAX_TOKENS
    ]
    return tokenizer, pairs


def batches(pairs: list[tuple[list[int], list[int]]], batch_tokens: int, rng: random.Random):
    """Endless batches of similar-length samples so that little compute goes to padding."""
    while True:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for start in range(0, len(order), 2048):
            chunk = sorted(order[start : start + 2048], key=lambda i: sum(map(len, pairs[i])))
            groups: list[list[int]] = []
            current: list[int] = []
            for i in chunk:
                length = sum(map(len, pairs[i]))
                if current and length * (len(current) + 1) > batch_tokens:
                    groups.append(current)
                    current = []
                current.append(i)
            if current:
                groups.append(current)
            rng.shuffle(groups)
            for group in groups:
                yield _collate([pairs[i] for i in group])


def _collate(samples: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) + len(c) for p, c in samples)
    ids = torch.zeros((len(samples), width), dtype=torch.long)
    targets = torch.full((len(samples), width), -100, dtype=torch.long)
    for row, (prompt, completion) in enumerate(samples):
        seq = prompt + completion
        ids[row, : len(seq)] = torch.tensor(seq)
        # Position t predicts token t+1; only the assistant's part is learned.
        targets[row, len(prompt) - 1 : len(seq) - 1] = torch.tensor(completion)
    return ids, targets


def lr_at(step: int, s: RunSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def export(model: Qwen2ForCausalLM, tokenizer, out: Path) -> int:  # noqa: ANN001
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    size = write_bf16(out / "model.safetensors", tensors, {"format": "pt"})
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    config = model.cfg.hf_config(bos_token_id=bos, eos_token_id=eos)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {
        "bos_token_id": bos,
        "eos_token_id": eos,
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tokenizer.save(str(out / "tokenizer.json"))
    tok_config = tokenizer_config(R1_TOKENIZER_CONFIG)
    (out / "tokenizer_config.json").write_text(
        json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description="Train fathom-tiny.")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "resources" / "fathom-tiny")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fathom-tiny-train"))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--ffn", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop early (pilot runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = RunSettings(
        args.steps, args.batch_tokens, args.lr, args.warmup, args.samples, TRAIN_SEED
    )
    started = time.monotonic()
    tokenizer, pairs = build_data(settings)
    lengths = [len(p) + len(c) for p, c in pairs]
    print(
        f"data: {len(pairs)} samples, mean {np.mean(lengths):.0f} tokens, max {max(lengths)}, "
        f"vocab {tokenizer.get_vocab_size()}, built in {time.monotonic() - started:.0f}s",
        flush=True,
    )

    torch.manual_seed(settings.seed)
    cfg = TinyConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
    )
    model = Qwen2ForCausalLM(cfg)
    print(f"model: {model.param_count():,} parameters, {asdict(cfg)}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    latest = args.workdir / "latest.pt"
    step = 0
    data_rng = random.Random(settings.seed + 1)
    if args.resume and latest.exists():
        state = torch.load(latest, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        data_rng.setstate(state["data_rng"])
        print(f"resumed at step {step}", flush=True)
    feed = batches(pairs, settings.batch_tokens, data_rng)

    model.train()
    train_started = time.monotonic()
    window_tokens, window_loss, window_n, window_start = 0, 0.0, 0, time.monotonic()
    while step < settings.steps:
        ids, targets = next(feed)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, settings)
        logits = model(ids)
        loss = F.cross_entropy(logits.view(-1, cfg.vocab_size), targets.view(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        window_tokens += ids.numel()
        window_loss += loss.item()
        window_n += 1
        if step % 25 == 0 or step == settings.steps:
            now = time.monotonic()
            print(
                f"step {step} loss {window_loss / window_n:.4f} lr {lr_at(step, settings):.2e} "
                f"{window_tokens / (now - window_start):.0f} tok/s "
                f"elapsed {(now - train_started) / 60:.1f} min",
                flush=True,
            )
            window_tokens, window_loss, window_n, window_start = 0, 0.0, 0, now
        if step % args.save_every == 0 or step == settings.steps:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "data_rng": data_rng.getstate(),
                    "config": asdict(cfg),
                },
                latest,
            )
            export(model, tokenizer, args.workdir / "export")
        if args.max_minutes and time.monotonic() - train_started > args.max_minutes * 60:
            print("stopping: --max-minutes reached", flush=True)
            break
    size = export(model, tokenizer, args.out)
    total = time.monotonic() - started
    print(
        f"wrote {args.out} (model.safetensors {size:,} bytes); total {total / 60:.1f} min",
        flush=True,
    )


if __name__ == "__main__":
    main()
