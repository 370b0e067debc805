"""Prompt templates.

``M2PO_TEMPLATE`` is the question template of the M2PO paper (appendix, "Question Template"),
with ``{question}`` in place of the paper's ``{{Question Description}}``. The paper's PDF prints
a typographic apostrophe in "Let's"; stalerl uses the ASCII one.
"""

from __future__ import annotations

from typing import Any

from stalerl.errors import TemplateError

__all__ = ["M2PO_TEMPLATE", "PLAIN_TEMPLATE", "TEMPLATES", "format_prompt"]

#: The M2PO paper's question template.
M2PO_TEMPLATE = (
    "Please solve the following math problem: {question}. The assistant first thinks about the "
    "reasoning process step by step and then provides the user with the answer. Return the final "
    "answer in \\boxed{{}} tags, for example \\boxed{{1}}. Let's solve this step by step."
)

#: The question alone.
PLAIN_TEMPLATE = "{question}"

#: Named templates accepted by :func:`format_prompt`.
TEMPLATES = {"m2po": M2PO_TEMPLATE, "plain": PLAIN_TEMPLATE}


def format_prompt(
    question: str | list[dict[str, str]],
    template: str = "m2po",
    tokenizer: Any = None,
    chat: bool = False,
    system_prompt: str | None = None,
) -> str:
    """Build the prompt text for one question.

    Args:
        question: the problem statement.
        template: ``"m2po"`` (:data:`M2PO_TEMPLATE`), ``"plain"`` (the question alone) or a
            custom ``str.format`` string containing ``{question}`` (write literal braces as
            ``{{`` and ``}}``, e.g. ``"\\\\boxed{{}}"``).
        tokenizer: a Hugging Face tokenizer; needed only with ``chat=True``.
        chat: wrap the formatted question as a single user message with the tokenizer's chat
            template (``apply_chat_template(..., add_generation_prompt=True, tokenize=False)``).
        system_prompt: a system message put first when the prompt is chat messages (``chat=True``
            or ``question`` given as messages without a system message of its own).

    ``question`` may also be a list of chat messages (verl's ``prompt`` column): they are the
    prompt as they are (``template`` does not apply) and go through the chat template whatever
    ``chat`` says.

    Returns:
        The prompt string.

    Raises:
        ValueError: when a custom template has no ``{question}`` field or is malformed, when
            ``chat=True`` without a tokenizer, or when the tokenizer has no chat template.

    Example:
        >>> format_prompt("What is 1+1?", "plain")
        'What is 1+1?'
        >>> format_prompt("What is 1+1?").startswith("Please solve the following math problem: What is 1+1?.")
        True
    """
    if isinstance(question, list):
        messages = list(question)
        if system_prompt and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        return _apply_chat_template(messages, tokenizer)
    tmpl = TEMPLATES.get(template, template)
    if "{question}" not in tmpl:
        raise TemplateError(
            f"unknown template {template!r}: use one of {sorted(TEMPLATES)} or a format string "
            "containing '{question}'"
        )
    try:
        text = tmpl.format(question=question)
    except (KeyError, IndexError, ValueError) as exc:
        raise TemplateError(
            f"template {template!r} is not a valid format string with only '{{question}}' "
            f"({type(exc).__name__}: {exc}); write literal braces as '{{{{' and '}}}}'"
        ) from exc
    if not chat:
        return text
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return _apply_chat_template(messages + [{"role": "user", "content": text}], tokenizer)


def _apply_chat_template(messages: list[dict[str, str]], tokenizer: Any) -> str:
    if tokenizer is None:
        raise TemplateError("format_prompt(chat=True) needs a tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        raise TemplateError(
            f"tokenizer {name!r} has no chat template; use chat=False for a base model (with prompts "
            "given as text, not chat messages), or set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
