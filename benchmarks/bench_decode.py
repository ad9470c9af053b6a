"""KV-cache greedy decoding: our GPT vs transformers' GPT2LMHeadModel, same weights, runs interleaved.

    python benchmarks/bench_decode.py --device cpu --shape 124m --prompt 32 --new_tokens 64

Both go through generate() with the cache, so this measures the model's per-token cost plus the library's loop.
The two must produce the same tokens; the script checks that before timing anything.
"""

import argparse
import sys

import torch

from common import add_shape_arguments, median, print_report, timed, twin_models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser, shape="124m", batch=1)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    ours, theirs = twin_models(args.shape, args.prompt + args.new_tokens, args.device)
    models = {"ours": ours.eval(), "GPT2LMHeadModel": theirs.eval()}
    prompt = torch.randint(0, 50257, (args.batch, args.prompt), device=args.device)

    def decode(model):
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True,
                              max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=50256)

    with torch.no_grad():
        outputs = {name: decode(model) for name, model in models.items()}  # also the warm-up
        if not torch.equal(outputs["ours"], outputs["GPT2LMHeadModel"]):
            print("error: the two models generated different tokens", file=sys.stderr)
            return 1
        seconds = {name: [] for name in models}
        for repeat in range(args.repeats):
            for name in (list(models) if repeat % 2 == 0 else list(reversed(models))):
                seconds[name].append(timed(lambda: decode(models[name]), args.device))

    new_tokens = args.batch * args.new_tokens
    rows = [{"model": name, "time (ms)": f"{median(seconds[name]) * 1e3:.0f}",
             "new tokens/s": f"{new_tokens / median(seconds[name]):,.1f}"} for name in models]
    ratio = median(seconds["GPT2LMHeadModel"]) / median(seconds["ours"])
    rows.append({"model": "ratio ours / GPT2LMHeadModel", "time (ms)": "", "new tokens/s": f"**{ratio:.2f}x**"})
    print_report("Greedy decoding with the KV cache: ours vs GPT2LMHeadModel", argv,
                 f"shape {args.shape}, batch {args.batch}, {args.prompt}-token prompt, {args.new_tokens} new tokens, "
                 f"median of {args.repeats} interleaved runs", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
