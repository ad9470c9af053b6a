"""Sample text from a GPT: a recipe checkpoint, an OpenAI GPT-2 Hub id, or a to-openai export.

    python -m recipe.generate outputs/my-run --prompt "Hello, I'm a language model," --num_return_sequences 5
    python -m recipe.generate gpt2 --prompt "To be, or not to be" --temperature 0   # greedy

Generation goes through transformers' `generate()` with the KV cache. A prompt that does not leave room for
`--max_new_tokens` in the model's context is refused (never silently cut): shorten it or ask for fewer tokens.
"""

import argparse
import sys
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, TextStreamer, set_seed
from transformers.utils.logging import disable_progress_bar

from .checkpoints import CheckpointError
from .convert import load_model, resolve_checkpoint
from .modeling_gpt import GPTForCausalLM
from .tokenization import load_tokenizer


def load_model_and_tokenizer(name_or_path: str | Path) -> tuple[GPTForCausalLM, PreTrainedTokenizerBase]:
    """The model (see `recipe.convert.load_model`) and the tokenizer saved with it, else GPT-2's bundled one."""
    directory = resolve_checkpoint(name_or_path)
    model = load_model(directory).eval()
    has_tokenizer = any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json"))
    return model, load_tokenizer(directory if has_tokenizer else None)


def check_sampling(temperature: float, top_k: int, top_p: float, max_new_tokens: int,
                   num_return_sequences: int) -> None:
    """Refuse, by flag and value, settings that generate() would reject late or misread."""
    if not temperature >= 0:
        raise ValueError(f"--temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k < 0:
        raise ValueError(f"--top_k={top_k} must be >= 0 (0 means no top-k filtering)")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top_p={top_p} must be in (0, 1] (1 means no nucleus filtering)")
    if max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens={max_new_tokens} must be at least 1")
    if num_return_sequences < 1:
        raise ValueError(f"--num_return_sequences={num_return_sequences} must be at least 1")
    if temperature == 0 and num_return_sequences > 1:
        raise ValueError(
            f"--num_return_sequences={num_return_sequences} needs sampling: greedy decoding (--temperature 0) "
            f"has one answer"
        )


@torch.no_grad()
def generate_text(
    model: GPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
    streamer: TextStreamer | None = None,
) -> list[str]:
    """Prompt plus continuation, one string per sequence. Temperature 0 is greedy decoding; otherwise sampling
    with top-k 50 by default (what build-nanogpt and transformers' pipeline use for GPT-2)."""
    check_sampling(temperature, top_k, top_p, max_new_tokens, num_return_sequences)
    eot_id = tokenizer.eos_token_id
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [eot_id]  # "" samples unconditionally
    context = model.config.n_positions
    if len(prompt_ids) >= context:
        raise ValueError(
            f"the prompt is {len(prompt_ids)} tokens, which fills the model's context of {context} tokens: "
            f"shorten it (prompts are never truncated)"
        )
    if len(prompt_ids) + max_new_tokens > context:
        raise ValueError(
            f"the prompt is {len(prompt_ids)} tokens and --max_new_tokens={max_new_tokens}, but the model's context "
            f"is {context} tokens: lower --max_new_tokens to {context - len(prompt_ids)} or shorten the prompt"
        )
    if seed is not None:
        set_seed(seed)
    if temperature == 0:
        decoding = dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        decoding = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    sequences = model.generate(
        torch.tensor([prompt_ids], device=model.device),
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_return_sequences,
        use_cache=True,
        pad_token_id=eot_id,
        streamer=streamer,
        **decoding,
    )  # (num_return_sequences, prompt + new tokens), stopped early at <|endoftext|>
    return tokenizer.batch_decode(sequences, skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="recipe checkpoint, OpenAI GPT-2 Hub id (gpt2, ...) or to-openai export")
    parser.add_argument("--prompt", required=True, help='the text to continue ("" samples unconditionally)')
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 means greedy decoding")
    parser.add_argument("--top_k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=1.0, help="sample within this probability mass, in (0, 1]")
    parser.add_argument("--num_return_sequences", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="for reproducible samples")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    args = parser.parse_args(argv)
    disable_progress_bar()  # only the samples (or one error line) are printed
    try:
        check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens, args.num_return_sequences)
        if args.stream and args.num_return_sequences > 1:
            raise ValueError("--stream prints one sequence as it is generated; drop --num_return_sequences")
        model, tokenizer = load_model_and_tokenizer(args.checkpoint)
        device = torch.accelerator.current_accelerator() or torch.device("cpu")
        streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.stream else None
        texts = generate_text(
            model.to(device), tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            num_return_sequences=args.num_return_sequences, seed=args.seed, streamer=streamer,
        )
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.stream:  # the streamer has printed the text already
        print(("\n" + "-" * 40 + "\n").join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
