"""A Hugging Face-native recipe that reproduces GPT-2 (124M) from scratch.

`import recipe` registers the model with the Auto classes, so `AutoModelForCausalLM.from_pretrained` finds it,
and marks it for remote code, so every saved checkpoint carries the two files that define it.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_gpt import GPTConfig
from .modeling_gpt import GPTForCausalLM, GPTModel

AutoConfig.register(GPTConfig.model_type, GPTConfig)
AutoModel.register(GPTConfig, GPTModel)
AutoModelForCausalLM.register(GPTConfig, GPTForCausalLM)
GPTConfig.register_for_auto_class()
GPTModel.register_for_auto_class("AutoModel")
GPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["GPTConfig", "GPTModel", "GPTForCausalLM"]
