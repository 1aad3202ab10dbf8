"""Token counting without a tokenizer model.

Real BPE tokenizers (tiktoken, WordPiece) need a vocabulary file that would be
downloaded at run time, which this service does not do. :func:`count_tokens`
approximates them instead, calibrated on English prose to about 0.75 words per
token (the usual rule of thumb for ``cl100k``-style vocabularies):

* a run of letters is one token per started :data:`LETTERS_PER_TOKEN` letters
  (common words are one token, long or rare words several);
* a run of digits is one token per started three digits (BPE vocabularies
  split numbers into at most three-digit pieces);
* every other visible character (punctuation, operators, symbols, emoji) and
  every CJK ideograph, kana or hangul syllable is one token;
* whitespace counts nothing.

Code comes out somewhat high (each ``(``, ``=``, ``.`` counts alone) and
indentation is free; both err on the side of smaller chunks. Because
whitespace is free and no piece spans whitespace, the count is additive:
``count_tokens(a + " " + b) == count_tokens(a) + count_tokens(b)``, which is
what lets the chunker budget pieces before it joins them.
"""

from __future__ import annotations

import re

__all__ = ["LETTERS_PER_TOKEN", "count_tokens"]

#: Letters a token covers on average within a word.
LETTERS_PER_TOKEN = 6

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
#: One match per token: the classes are disjoint, and a greedy ``{1,6}`` cuts a run of n letters
#: into ceil(n / 6) matches (``{1,3}``: digits into ceil(n / 3)), so counting is one ``findall``
#: in C rather than a Python loop over runs. Then one token each: CJK characters (which \w counts
#: as letters), "_", and everything that is neither \w nor space.
_TOKENS = re.compile(rf"[^\W\d_{_CJK}]{{1,{LETTERS_PER_TOKEN}}}|\d{{1,3}}|[{_CJK}_]|[^\w\s]")


def count_tokens(text: str) -> int:
    """An estimate of how many model tokens ``text`` is (see the module docstring for the rules)."""
    return len(_TOKENS.findall(text))
