"""Greedy accuracy of an exported fathom-tiny checkpoint in PyTorch, before any conversion.

    PYTHONPATH=. .venv/bin/python -m training.evaluate resources/fathom-tiny --count 200

This is the training-side check; the figure that counts goes through the whole app stack
(bench/demo_accuracy.py: convert, quantize, engine, reasoning split, \\boxed{} extraction).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer

from training.chat_format import ASSISTANT, BOS, EOS, THINK_CLOSE, THINK_OPEN, USER
from training.heldout import boxed_answer, held_out_problems
from training.model import Qwen2ForCausalLM, TinyConfig
from training.safetensors_io import read_as_float32


def load(checkpoint: Path) -> tuple[Qwen2ForCausalLM, Tokenizer]:
    config = json.loads((checkpoint / "config.json").read_text())
    fields = TinyConfig.__dataclass_fields__
    model = Qwen2ForCausalLM(TinyConfig(**{k: v for k, v in config.items() if k in fields}))
    weights = read_as_float32(checkpoint / "model.safetensors")
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    model.eval()
    return model, Tokenizer.from_file(str(checkpoint / "tokenizer.json"))


@torch.no_grad()
def greedy(
    model: Qwen2ForCausalLM, prompts: list[list[int]], eos: int, max_new: int
) -> list[list[int]]:
    """Batched greedy decoding: prompts left-padded, a key mask hides the padding."""
    width = max(map(len, prompts))
    batch = len(prompts)
    ids = torch.zeros((batch, width), dtype=torch.long)
    valid = torch.zeros((batch, width), dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        valid[row, width - len(p) :] = True
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    # Padding rows attend to themselves only, so that no row of the mask is empty.
    mask = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool)
    caches: list[list[torch.Tensor]] = [[] for _ in model.model.layers]
    logits = model(ids, positions, mask[:, None], caches)
    next_pos = positions[:, -1] + 1
    outputs: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_new):
        token = logits[:, -1].argmax(-1)
        for row in range(batch):
            if not done[row]:
                outputs[row].append(int(token[row]))
        done |= token == eos
        if bool(done.all()):
            break
        valid = torch.cat([valid, torch.ones((batch, 1), dtype=torch.bool)], dim=1)
        logits = model(token[:, None], next_pos[:, None], valid[:, None, None, :], caches)
        next_pos = next_pos + 1
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch greedy accuracy on held-out problems.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--show-errors", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load(args.checkpoint)
    eos = tokenizer.token_to_id(EOS)
    items = held_out_problems(args.count)
    # The current R1 template: the prompt already ends with "<think>\n".
    prompts = [
        tokenizer.encode(
            f"{BOS}{USER}{p.question}{ASSISTANT}{THINK_OPEN}\n", add_special_tokens=False
        ).ids
        for p in items
    ]
    started = time.monotonic()
    right = closed = 0
    errors = []
    for start in range(0, len(items), args.batch):
        outs = greedy(model, prompts[start : start + args.batch], eos, max_new=420)
        for problem, out in zip(items[start : start + args.batch], outs, strict=True):
            text = tokenizer.decode(out, skip_special_tokens=False)
            has_close = THINK_CLOSE in text
            answer = text.split(THINK_CLOSE)[-1] if has_close else ""
            value = boxed_answer(answer)
            closed += has_close and value is not None
            if value == problem.answer:
                right += 1
            else:
                errors.append((problem, text))
    n = len(items)
    print(
        f"{right}/{n} correct ({100 * right / n:.1f}%), {closed}/{n} closed with a boxed answer, "
        f"{time.monotonic() - started:.0f}s"
    )
    for problem, text in errors[: args.show_errors]:
        print(f"--- expected {problem.answer}\n{problem.question}\n{text}")


if __name__ == "__main__":
    main()
