"""Fields: a grid followed by a decoder."""

from gridfield.fields.decoders import IdentityDecoder, LinearDecoder, MLPDecoder, make_decoder
from gridfield.fields.field import Field

__all__ = ["Field", "IdentityDecoder", "LinearDecoder", "MLPDecoder", "make_decoder"]
