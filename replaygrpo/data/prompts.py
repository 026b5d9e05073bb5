"""Prompt templates. One registry, so the toy lab and the real benchmarks share a path.

`qwen_math` is the Qwen2.5-Math evaluator's `qwen25-math-cot` prompt (ChatML, a system
turn asking for step-by-step reasoning and a \\boxed{} answer, the question as the user
turn, an open assistant turn); `qwen_boxed` is its older `qwen-boxed` variant; `toy` is a
short plain-text prompt for the tiny model, with the same \\boxed{} answer format.
"""
from __future__ import annotations

from collections.abc import Callable

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

TEMPLATES: dict[str, Callable[[str], str]] = {}


def register_template(name: str) -> Callable[[Callable[[str], str]], Callable[[str], str]]:
    def wrap(fn: Callable[[str], str]) -> Callable[[str], str]:
        TEMPLATES[name] = fn
        return fn

    return wrap


@register_template("qwen_math")
def qwen_math(question: str) -> str:
    return (
        f"<|im_start|>system\n{BOXED_INSTRUCTION}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@register_template("qwen_boxed")
def qwen_boxed(question: str) -> str:
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{question}\n{BOXED_INSTRUCTION}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@register_template("toy")
def toy(question: str) -> str:
    # Short on purpose: the tiny model's cost is dominated by sequence length.
    return f"Question: {question}\nAnswer: "


def render(template: str, question: str) -> str:
    try:
        return TEMPLATES[template](question)
    except KeyError:
        raise ValueError(f"unknown prompt template {template!r}; known: {', '.join(TEMPLATES)}") from None
