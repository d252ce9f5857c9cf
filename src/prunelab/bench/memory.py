"""Peak memory of calibration + pruning versus the number of decoder blocks.

The sequential protocol keeps one block and the calibration activations in flight, so peak RSS
minus the weights should stay flat as blocks are added. Each depth runs in a fresh process (RSS
peaks do not reset within one), on random LLaMA models with the embedded model's block shape.

    python -m prunelab.bench.memory --blocks 4 8 16 32 --nsamples 32 --seqlen 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SMOLLM2_BLOCK = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                     max_position_embeddings=8192, vocab_size=49152, tie_word_embeddings=True)


def measure(blocks: int, nsamples: int, seqlen: int, method: str) -> dict:
    """Prune a random ``blocks``-deep model in this process; return its memory figures."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunelab.config import build, compose
    from prunelab.evidence import PeakMemory
    from prunelab.patterns import Unstructured
    from prunelab.prune import prune_model

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=blocks, **SMOLLM2_BLOCK)).eval()
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    ids = torch.randint(0, SMOLLM2_BLOCK["vocab_size"], (nsamples, seqlen))
    pruner = build(compose(f"method={method}").method, "method")
    with PeakMemory() as memory:
        baseline_mb = memory.peak_rss / 2**20
        report = prune_model(model, pruner, 0.5, Unstructured(), ids, torch.device("cpu"), cache=False)
    peak_mb = memory.peak_rss / 2**20
    return {"blocks": blocks, "weights_mb": weights_mb, "rss_before_mb": baseline_mb, "peak_rss_mb": peak_mb,
            "growth_mb": peak_mb - baseline_mb, "calibration_s": report.calibration_s, "prune_s": report.prune_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.blocks[0], args.nsamples, args.seqlen, args.method)))
        return
    rows = []
    for blocks in args.blocks:
        out = subprocess.run([sys.executable, "-m", "prunelab.bench.memory", "--child", "--blocks", str(blocks),
                              "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--method", args.method],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"calibration {args.nsamples} x {args.seqlen} tokens, method {args.method}, CPU")
    print(f"{'blocks':>6} {'weights MB':>11} {'RSS before':>11} {'peak RSS':>9} {'growth MB':>10} {'calib s':>8} {'prune s':>8}")
    for r in rows:
        print(f"{r['blocks']:>6} {r['weights_mb']:>11.0f} {r['rss_before_mb']:>11.0f} {r['peak_rss_mb']:>9.0f} "
              f"{r['growth_mb']:>10.0f} {r['calibration_s']:>8.1f} {r['prune_s']:>8.1f}")
    first, last = rows[0], rows[-1]
    print(f"growth ratio {last['blocks']}/{first['blocks']} blocks: {last['growth_mb'] / first['growth_mb']:.2f}x "
          f"(weights grew {last['weights_mb'] / first['weights_mb']:.2f}x)")


if __name__ == "__main__":
    main()
