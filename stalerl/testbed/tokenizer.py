"""The character-level tokenizer of the embedded testbed.

:func:`build_char_tokenizer` returns a :class:`transformers.PreTrainedTokenizerFast` built
with the ``tokenizers`` library: a WordLevel model whose vocabulary is the four special
tokens followed by every printable ASCII character (space included) and ``"\\n"``; a
pre-tokenizer isolates every single character and a ``Fuse`` decoder concatenates them
back, so ``decode(encode(s)) == s`` exactly for any ASCII text (spaces, ``\\``, ``{``,
``}`` included). Characters outside the vocabulary map to ``<unk>``.

No special token is added automatically on encoding (like Qwen tokenizers: no BOS);
``<eos>`` ends every completion, ``<pad>`` pads, and padding is on the left because
generation batches are left-padded. Saved with ``save_pretrained``, it reloads through
``transformers.AutoTokenizer.from_pretrained`` like any real checkpoint's tokenizer.
"""

from __future__ import annotations

import string

__all__ = ["build_char_tokenizer", "SPECIAL_TOKENS", "CHARACTERS"]

#: Special tokens, in vocabulary order (ids 0..3).
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")

#: The ordinary characters of the vocabulary (ids 4..): printable ASCII and newline.
CHARACTERS = tuple(
    sorted(set(string.digits + string.ascii_letters + string.punctuation + " " + "\n"))
)


def build_char_tokenizer(model_max_length: int = 256):
    """Build the testbed's character tokenizer.

    Args:
        model_max_length: recorded as the tokenizer's ``model_max_length`` (the testbed
            model's ``max_position_embeddings``).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with ``pad_token="<pad>"``,
        ``eos_token="<eos>"``, ``bos_token="<bos>"``, ``unk_token="<unk>"``,
        ``padding_side="left"`` and ``clean_up_tokenization_spaces=False``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # [\s\S] matches every character, newline included; each one becomes its own token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    return fast
