from kinspect.inspector.x86.flags import BitField, fields_mask, format_flags

CR0_LIKE = (
    BitField("PE", 0),
    BitField("MP", 1),
    BitField("ET", 4),
    BitField("NE", 5),
    BitField("WP", 16),
    BitField("PG", 31),
)


def test_named_bits_then_unknown_in_hex():
    assert format_flags(0x80010133, CR0_LIKE) == "PE|MP|ET|NE|WP|PG|0x100"


def test_unknown_bits_are_one_hex_number_not_decimal():
    assert format_flags(0x1 | 0x300, CR0_LIKE) == "PE|0x300"


def test_zero_is_empty_and_only_unknown_is_hex():
    assert format_flags(0, CR0_LIKE) == ""
    assert format_flags(0x4, CR0_LIKE) == "0x4"


def test_multi_bit_field_prints_value_and_is_omitted_when_zero():
    fields = (BitField("IF", 9), BitField("IOPL", 12, 2))
    assert format_flags(0x3200, fields) == "IF|IOPL=3"
    assert format_flags(0x1000, fields) == "IOPL=1"
    assert format_flags(0x0200, fields) == "IF"


def test_address_field_prints_in_place_in_hex():
    fields = (BitField("PWT", 3), BitField("BASE", 12, 40, as_address=True))
    assert format_flags(0x487C008, fields, sep=" ") == "PWT BASE=0x487c000"
    assert fields[1].extract(0x487C008) == 0x487C000


def test_hidden_field_is_known_but_not_printed():
    fields = (BitField("CF", 0), BitField("1", 1, hidden=True))
    assert format_flags(0x3, fields) == "CF"
    assert fields_mask(fields) == 0x3


def test_order_is_by_bit_not_by_table_order():
    fields = (BitField("HI", 5), BitField("LO", 0))
    assert format_flags(0x21, fields) == "LO|HI"


def test_bitfield_mask_and_extract():
    field = BitField("PK", 59, 4)
    assert field.mask == 0x7800000000000000
    assert field.extract(0x5800000000000000) == 0xB
