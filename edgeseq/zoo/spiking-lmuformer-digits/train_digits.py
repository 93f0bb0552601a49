"""Train a zoo LMUFormer / Spiking LMUFormer on sequential digits (rows), CPU, bounded time.

    python edgeseq/zoo/spiking-lmuformer-digits/train_digits.py lmuformer OUT_DIR [--dim 64] [--epochs 60] ...

Adam with a cosine schedule and light weight decay; the best validation checkpoint is kept and its
held-out test accuracy (mean of per-frame scores over the whole sequence, i.e. the final running
mean) is written into the model's ``meta``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from torch import nn

from edgeseq.checkpoints import save_model
from edgeseq.datasets.digits import load_split
from edgeseq.models import build_model


@torch.no_grad()
def accuracy(model: nn.Module, frames: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    pred = model(frames).mean(dim=1).argmax(dim=-1)
    return (pred == labels).float().mean().item()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("family", choices=["lmuformer", "spiking-lmuformer"])
    p.add_argument("out")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--memory-size", type=int, default=0)
    p.add_argument("--theta", type=float, default=8.0)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--noise", type=float, default=0.05, help="std of Gaussian pixel noise added in training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=9.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x_train, y_train = load_split("train")
    x_val, y_val = load_split("validation")
    x_test, y_test = load_split("test")
    model = build_model(args.family, input_dim=8, dim=args.dim, depth=args.depth, n_classes=10,
                        memory_size=args.memory_size, theta=args.theta, dataset="digits",
                        dataset_options={"mode": "rows"})
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(args.seed)
    best = (-1.0, None, 0)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        losses = []
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            frames = x_train[idx] + args.noise * torch.randn(len(idx), 8, 8, generator=gen)
            loss = nn.functional.cross_entropy(model(frames).mean(dim=1), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = accuracy(model, x_val, y_val)
        if val > best[0]:
            best = (val, {k: v.clone() for k, v in model.state_dict().items()}, epoch)
        print(f"epoch {epoch:3d} loss {sum(losses) / len(losses):.4f} val {val:.4f}", file=sys.stderr, flush=True)
        if time.time() - start > args.max_minutes * 60:
            print("time budget reached", file=sys.stderr)
            break
    model.load_state_dict(best[1])
    result = {
        "family": args.family,
        "params": model.num_parameters(),
        "best_epoch": best[2],
        "validation_accuracy": round(best[0], 4),
        "test_accuracy": round(accuracy(model, x_test, y_test), 4),
        "train_accuracy": round(accuracy(model, x_train, y_train), 4),
        "train_minutes": round((time.time() - start) / 60, 2),
        "command": "python edgeseq/zoo/spiking-lmuformer-digits/train_digits.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    save_model(model, args.out, meta=result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
