"""Token ids -> streamed text, with stop strings, for one request.

Byte-level tokenizers can split a character across tokens, so text is released
only when it decodes cleanly, and, when stop strings are set, only once it can no
longer be the start of one (so a stop string never reaches the client).
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stops: list[str]) -> None:
        self._tokenizer = tokenizer
        self._stops = stops
        self._hold = max((len(s) for s in stops), default=1) - 1
        self.token_ids: list[int] = []
        self._text = ""
        self._sent = 0
        self.stopped = False

    def push(self, token_ids: list[int]) -> str:
        """Add tokens; return the new text safe to send. Sets ``stopped`` when a stop string appears."""
        if self.stopped:
            return ""
        for token in token_ids:
            self.token_ids.append(token)
            text = self._tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if text.endswith(REPLACEMENT):
                continue  # wait for the rest of a multi-byte character
            self._text = text
            cut = self._stop_at()
            if cut is not None:
                self.stopped = True
                self._text = self._text[:cut]
                return self._release(len(self._text))
        return self._release(len(self._text) - self._hold)

    def flush(self) -> str:
        """The rest of the text at the end of the request (an unfinished character decodes as U+FFFD)."""
        if not self.stopped:
            self._text = self._tokenizer.decode(self.token_ids, skip_special_tokens=True)
        return self._release(len(self._text))

    def _stop_at(self) -> int | None:
        positions = [i for s in self._stops if (i := self._text.find(s, max(0, self._sent - len(s)))) >= 0]
        return min(positions) if positions else None

    def _release(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        chunk, self._sent = self._text[self._sent : upto], upto
        return chunk
