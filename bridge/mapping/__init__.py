"""Record → Kard item: strict decoding, schema validation and the pure event-to-item mappings.

The public surface is :class:`MappingContext` (built once at start) and :func:`map_record` (called
per record). The mapping hook for issuers with differently shaped events is documented in
:mod:`bridge.mapping.context`.
"""

from __future__ import annotations

from bridge.mapping.context import MappingContext, MappingHook
from bridge.mapping.decode import decode_value
from bridge.mapping.mapper import map_record

__all__ = ["MappingContext", "MappingHook", "decode_value", "map_record"]
