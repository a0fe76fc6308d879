"""Text from a growing list of tokens, released only once it is final.

Decoding the tokens so far gives the whole text each step. What may still change is held back: the
last few characters while they could become the start of a stop string, and a trailing U+FFFD while
it may be the first bytes of a UTF-8 character whose other bytes arrive with the next token (the
BPE tokenizer splits characters between tokens). sample.py prints what this releases; serve.py sends
it as each choice's text deltas.
"""


class TextStream:
    """One sequence's text: update() with its tokens after each step, then release() what is final."""

    def __init__(self, decode, stops=()):
        self.decode = decode
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1  # a stop string's length - 1
        self.text = ""
        self.sent = 0
        self.stopped = False  # a stop string appeared: the text ends before it

    def update(self, tokens):
        """Decode the tokens so far; the text is cut before the first stop string in it."""
        text = self.decode(tokens)
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        if cut >= 0:
            text, self.stopped = text[:cut], True
        self.text = text

    def release(self, final=False):
        """The text after what was released before, up to where it may still change ("" when
        nothing is settled yet); final: the sequence has ended, so everything goes."""
        end = len(self.text)
        if not final:
            end = max(self.sent, end - self.hold)
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1
        delta, self.sent = self.text[self.sent:end], max(self.sent, end)
        return delta
