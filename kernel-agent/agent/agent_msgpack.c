/* A small msgpack writer and reader, no allocation. */
#include "agent_msgpack.h"

void mp_writer_init(struct mp_writer *w, uint8_t *buf, size_t cap)
{
	w->buf = buf;
	w->cap = cap;
	w->len = 0;
	w->overflow = false;
}

static uint8_t *reserve(struct mp_writer *w, size_t n)
{
	if (w->overflow || n > w->cap - w->len) {
		w->overflow = true;
		return NULL;
	}
	uint8_t *p = w->buf + w->len;

	w->len += n;
	return p;
}

static void put_be(uint8_t *p, uint64_t v, unsigned bytes)
{
	for (unsigned i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

static void write_tagged(struct mp_writer *w, uint8_t tag, uint64_t v, unsigned bytes)
{
	uint8_t *p = reserve(w, 1 + bytes);

	if (p) {
		p[0] = tag;
		put_be(p + 1, v, bytes);
	}
}

void mp_write_nil(struct mp_writer *w)
{
	write_tagged(w, 0xc0, 0, 0);
}

void mp_write_bool(struct mp_writer *w, bool v)
{
	write_tagged(w, v ? 0xc3 : 0xc2, 0, 0);
}

void mp_write_uint(struct mp_writer *w, uint64_t v)
{
	if (v < 0x80)
		write_tagged(w, (uint8_t)v, 0, 0);
	else if (v <= 0xff)
		write_tagged(w, 0xcc, v, 1);
	else if (v <= 0xffff)
		write_tagged(w, 0xcd, v, 2);
	else if (v <= 0xffffffffULL)
		write_tagged(w, 0xce, v, 4);
	else
		write_tagged(w, 0xcf, v, 8);
}

void mp_write_int(struct mp_writer *w, int64_t v)
{
	if (v >= 0)
		mp_write_uint(w, (uint64_t)v);
	else if (v >= -32)
		write_tagged(w, (uint8_t)(int8_t)v, 0, 0);
	else if (v >= -128)
		write_tagged(w, 0xd0, (uint64_t)v, 1);
	else if (v >= -32768)
		write_tagged(w, 0xd1, (uint64_t)v, 2);
	else if (v >= -2147483648LL)
		write_tagged(w, 0xd2, (uint64_t)v, 4);
	else
		write_tagged(w, 0xd3, (uint64_t)v, 8);
}

static uint8_t *write_header(struct mp_writer *w, uint8_t fix, uint32_t fix_max, uint8_t tag8,
			     uint8_t tag16, uint8_t tag32, uint32_t n, size_t payload)
{
	size_t head = n <= fix_max ? 1 : (tag8 && n <= 0xff) ? 2 : n <= 0xffff ? 3 : 5;
	uint8_t *p = reserve(w, head + payload);

	if (!p)
		return NULL;
	if (head == 1)
		p[0] = (uint8_t)(fix | n);
	else if (head == 2)
		p[0] = tag8, p[1] = (uint8_t)n;
	else if (head == 3)
		p[0] = tag16, put_be(p + 1, n, 2);
	else
		p[0] = tag32, put_be(p + 1, n, 4);
	return p + head;
}

static void copy(uint8_t *dst, const void *src, size_t n)
{
	const uint8_t *s = src;

	for (size_t i = 0; i < n; i++)
		dst[i] = s[i];
}

void mp_write_str(struct mp_writer *w, const char *s, size_t len)
{
	uint8_t *p = write_header(w, 0xa0, 31, 0xd9, 0xda, 0xdb, (uint32_t)len, len);

	if (p)
		copy(p, s, len);
}

void mp_write_cstr(struct mp_writer *w, const char *s)
{
	size_t len = 0;

	while (s[len])
		len++;
	mp_write_str(w, s, len);
}

uint8_t *mp_write_bin_reserve(struct mp_writer *w, size_t len)
{
	/* bin has no fix form: fix_max 0 with fix 0xc4 never applies (n>0 handled by tag8). */
	size_t head = len <= 0xff ? 2 : len <= 0xffff ? 3 : 5;
	uint8_t *p = reserve(w, head + len);

	if (!p)
		return NULL;
	if (head == 2)
		p[0] = 0xc4, p[1] = (uint8_t)len;
	else if (head == 3)
		p[0] = 0xc5, put_be(p + 1, len, 2);
	else
		p[0] = 0xc6, put_be(p + 1, len, 4);
	return p + head;
}

void mp_write_bin(struct mp_writer *w, const void *data, size_t len)
{
	uint8_t *p = mp_write_bin_reserve(w, len);

	if (p)
		copy(p, data, len);
}

void mp_write_array(struct mp_writer *w, uint32_t n)
{
	write_header(w, 0x90, 15, 0, 0xdc, 0xdd, n, 0);
}

void mp_write_map(struct mp_writer *w, uint32_t n)
{
	write_header(w, 0x80, 15, 0, 0xde, 0xdf, n, 0);
}

/* -- reader ------------------------------------------------------------------ */

void mp_reader_init(struct mp_reader *r, const uint8_t *buf, size_t len)
{
	r->buf = buf;
	r->len = len;
	r->pos = 0;
}

static bool take(struct mp_reader *r, size_t n, uint64_t *out)
{
	if (n > r->len - r->pos)
		return false;
	uint64_t v = 0;

	for (size_t i = 0; i < n; i++)
		v = (v << 8) | r->buf[r->pos + i];
	r->pos += n;
	*out = v;
	return true;
}

static bool take_bytes(struct mp_reader *r, uint64_t n, struct mp_item *item, enum mp_type type)
{
	if (n > r->len - r->pos)
		return false;
	item->type = type;
	item->v.bytes.data = r->buf + r->pos;
	item->v.bytes.len = (uint32_t)n;
	r->pos += n;
	return true;
}

static int64_t sign_extend(uint64_t v, unsigned bytes)
{
	unsigned shift = 64 - 8 * bytes;

	return (int64_t)(v << shift) >> shift;
}

bool mp_read(struct mp_reader *r, struct mp_item *item)
{
	uint64_t tag, v;

	if (!take(r, 1, &tag))
		return false;
	if (tag <= 0x7f) {
		item->type = MP_UINT;
		item->v.u = tag;
		return true;
	}
	if (tag >= 0xe0) {
		item->type = MP_INT;
		item->v.i = (int8_t)tag;
		return true;
	}
	if ((tag & 0xf0) == 0x80 || (tag & 0xf0) == 0x90) {
		item->type = (tag & 0xf0) == 0x80 ? MP_MAP : MP_ARRAY;
		item->v.n = tag & 0x0f;
		return true;
	}
	if ((tag & 0xe0) == 0xa0)
		return take_bytes(r, tag & 0x1f, item, MP_STR);
	switch (tag) {
	case 0xc0:
		item->type = MP_NIL;
		return true;
	case 0xc2:
	case 0xc3:
		item->type = MP_BOOL;
		item->v.b = tag == 0xc3;
		return true;
	case 0xcc: case 0xcd: case 0xce: case 0xcf: {
		unsigned bytes = 1u << (tag - 0xcc);

		if (!take(r, bytes, &v))
			return false;
		item->type = MP_UINT;
		item->v.u = v;
		return true;
	}
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
		unsigned bytes = 1u << (tag - 0xd0);

		if (!take(r, bytes, &v))
			return false;
		int64_t s = sign_extend(v, bytes);

		if (s >= 0) {
			item->type = MP_UINT;
			item->v.u = (uint64_t)s;
		} else {
			item->type = MP_INT;
			item->v.i = s;
		}
		return true;
	}
	case 0xd9: case 0xda: case 0xdb:
		return take(r, 1u << (tag - 0xd9), &v) && take_bytes(r, v, item, MP_STR);
	case 0xc4: case 0xc5: case 0xc6:
		return take(r, 1u << (tag - 0xc4), &v) && take_bytes(r, v, item, MP_BIN);
	case 0xdc: case 0xdd:
		if (!take(r, tag == 0xdc ? 2 : 4, &v))
			return false;
		item->type = MP_ARRAY;
		item->v.n = (uint32_t)v;
		return true;
	case 0xde: case 0xdf:
		if (!take(r, tag == 0xde ? 2 : 4, &v))
			return false;
		item->type = MP_MAP;
		item->v.n = (uint32_t)v;
		return true;
	case 0xca: case 0xcb: { /* float32, float64: skipped, never interpreted */
		item->type = MP_OTHER;
		return take(r, tag == 0xca ? 4 : 8, &v);
	}
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: { /* fixext */
		item->type = MP_OTHER;
		size_t n = 1 + (1u << (tag - 0xd4));

		if (n > r->len - r->pos)
			return false;
		r->pos += n;
		return true;
	}
	case 0xc7: case 0xc8: case 0xc9: { /* ext 8/16/32 */
		if (!take(r, 1u << (tag - 0xc7), &v) || v + 1 > r->len - r->pos)
			return false;
		item->type = MP_OTHER;
		r->pos += v + 1;
		return true;
	}
	default: /* 0xc1 is never used */
		return false;
	}
}

#define MP_MAX_DEPTH 16

static bool skip_depth(struct mp_reader *r, unsigned depth)
{
	struct mp_item item;

	if (depth > MP_MAX_DEPTH || !mp_read(r, &item))
		return false;
	if (item.type == MP_ARRAY || item.type == MP_MAP) {
		uint64_t n = item.v.n * (item.type == MP_MAP ? 2ULL : 1ULL);

		/* Every element takes at least one byte: bound the loop by the input. */
		if (n > r->len - r->pos)
			return false;
		for (uint64_t i = 0; i < n; i++)
			if (!skip_depth(r, depth + 1))
				return false;
	}
	return true;
}

bool mp_skip(struct mp_reader *r)
{
	return skip_depth(r, 0);
}
