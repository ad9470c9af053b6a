"""Sample text from a GPT: a recipe checkpoint, an OpenAI GPT-2 Hub id, or a to-openai export.

    python -m recipe.generate outputs/my-run --prompt "Hello, I'm a language model," --num_return_sequences 5
    python -m recipe.generate gpt2 --prompt "To be, or not to be" --temperature 0   # greedy

Generation goes through transformers' `generate()` with the KV cache (recipe.sampling). A prompt that does not
leave room for `--max_new_tokens` in the model's context is refused (never silently cut).
"""

import argparse
import sys

import torch
from transformers import TextStreamer
from transformers.utils.logging import disable_progress_bar

from .errors import ConfigError, RecipeError, exit_command
from .sampling import check_sampling, generate_text
from .sources import load_model_and_tokenizer

__all__ = ["main", "generate_text"]  # generate_text is documented here too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="recipe checkpoint, OpenAI GPT-2 Hub id (gpt2, ...) or to-openai export")
    parser.add_argument("--prompt", required=True, help='the text to continue ("" samples unconditionally)')
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="new tokens to generate (default: 64, or as many as fit in the model's context)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 means greedy decoding")
    parser.add_argument("--top_k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=1.0, help="sample within this probability mass, in (0, 1]")
    parser.add_argument("--num_return_sequences", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="for reproducible samples")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    parser.add_argument("--compile", action="store_true",
                        help="static KV cache and a compiled forward: faster decoding on a GPU after a compilation")
    args = parser.parse_args(argv)
    disable_progress_bar()  # only the samples (or one error line) are printed
    try:
        check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.num_return_sequences)
        if args.stream and args.num_return_sequences > 1:
            raise ConfigError("--stream prints one sequence as it is generated; drop --num_return_sequences")
        model, tokenizer = load_model_and_tokenizer(args.checkpoint)
        device = torch.accelerator.current_accelerator() or torch.device("cpu")
        streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.stream else None
        texts = generate_text(
            model.to(device), tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            num_return_sequences=args.num_return_sequences, seed=args.seed, streamer=streamer, compile=args.compile,
        )
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.stream:  # the streamer has printed the text already
        print(("\n" + "-" * 40 + "\n").join(texts))
    return 0


if __name__ == "__main__":
    exit_command(main())
