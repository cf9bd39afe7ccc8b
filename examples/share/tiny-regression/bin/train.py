"""A small real training script: fits y = 3x - 2 + noise by gradient descent.

Prints the loss of every epoch, writes a checkpoint per epoch into the output folder the
way a real training script does (write to a temp file, then rename), and appends a row per
epoch to output/metrics.csv, from which droprun draws the run's training curve.
"""

import argparse
import json
import os
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--output", default="output")
    parser.add_argument("--sleep", type=float, default=0.2, help="seconds per epoch, to watch it")
    opts = parser.parse_args()

    rng = random.Random(0)
    data = [(x, 3 * x - 2 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(256))]
    w, b = 0.0, 0.0
    os.makedirs(opts.output, exist_ok=True)
    metrics = os.path.join(opts.output, "metrics.csv")
    with open(metrics, "w") as f:
        f.write("epoch,loss,w,b\n")
    for epoch in range(1, opts.epochs + 1):
        grad_w = grad_b = loss = 0.0
        for x, y in data:
            err = w * x + b - y
            loss += err * err / len(data)
            grad_w += 2 * err * x / len(data)
            grad_b += 2 * err / len(data)
        w -= opts.lr * grad_w
        b -= opts.lr * grad_b
        print(f"epoch {epoch}/{opts.epochs}  loss {loss:.4f}  w {w:.3f}  b {b:.3f}", flush=True)
        with open(metrics, "a") as f:
            f.write(f"{epoch},{loss:.6f},{w:.6f},{b:.6f}\n")
        path = os.path.join(opts.output, f"checkpoint-{epoch:03d}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"epoch": epoch, "w": w, "b": b, "loss": loss}, f)
        os.replace(path + ".tmp", path)
        time.sleep(opts.sleep)
    print("done", flush=True)


if __name__ == "__main__":
    main()
