/*
 * libFuzzer harness over the agent's msgpack reader and writer (agent_msgpack.c).
 *
 * Properties, beyond "no sanitizer report":
 *  - mp_read never reports str/bin bytes outside the buffer, and never moves
 *    its position backwards or past the end;
 *  - a value the reader can re-encode (the subset: no float, no ext) is one
 *    that mp_skip skips to the same place;
 *  - the writer's encoding is canonical: re-encoding it gives the same bytes,
 *    and mp_skip consumes exactly it.
 */
#include <stdint.h>
#include <string.h>

#include "agent_msgpack.h"
#include "fuzz_common.h"

#define MAX_INPUT 4096
#define MAX_DEPTH 16

static bool reenc(struct mp_reader *r, struct mp_writer *w, int depth)
{
	struct mp_item it;

	if (depth > MAX_DEPTH || !mp_read(r, &it))
		return false;
	switch (it.type) {
	case MP_NIL: mp_write_nil(w); return true;
	case MP_BOOL: mp_write_bool(w, it.v.b); return true;
	case MP_UINT: mp_write_uint(w, it.v.u); return true;
	case MP_INT:
		CHECK(it.v.i < 0);
		mp_write_int(w, it.v.i);
		return true;
	case MP_STR: mp_write_str(w, (const char *)it.v.bytes.data, it.v.bytes.len); return true;
	case MP_BIN: mp_write_bin(w, it.v.bytes.data, it.v.bytes.len); return true;
	case MP_ARRAY:
	case MP_MAP: {
		uint64_t n = (uint64_t)it.v.n * (it.type == MP_MAP ? 2 : 1);

		if (it.type == MP_MAP)
			mp_write_map(w, it.v.n);
		else
			mp_write_array(w, it.v.n);
		for (uint64_t i = 0; i < n; i++)
			if (!reenc(r, w, depth + 1))
				return false;
		return true;
	}
	default: return false;
	}
}

/* Every item header in turn, as a reader that does not know the structure sees them. */
static void scan(const uint8_t *data, size_t size)
{
	struct mp_reader r;
	struct mp_item it;

	mp_reader_init(&r, data, size);
	for (;;) {
		size_t before = r.pos;

		if (!mp_read(&r, &it))
			break;
		CHECK(r.pos > before && r.pos <= size);
		if (it.type == MP_STR || it.type == MP_BIN) {
			CHECK(it.v.bytes.data >= data && it.v.bytes.data <= data + size);
			CHECK(it.v.bytes.len <= (size_t)(data + size - it.v.bytes.data));
		}
	}
	CHECK(r.pos <= size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t out[2 * MAX_INPUT + 64], again[2 * MAX_INPUT + 64];
	struct mp_reader r, rs;
	struct mp_writer w, w2;

	if (size > MAX_INPUT)
		return 0;
	scan(data, size);

	mp_reader_init(&rs, data, size);
	bool skipped = mp_skip(&rs);

	CHECK(rs.pos <= size);
	mp_reader_init(&r, data, size);
	mp_writer_init(&w, out, sizeof(out));
	if (!reenc(&r, &w, 0) || w.overflow)
		return 0;
	CHECK(skipped && rs.pos == r.pos);

	/* The writer's bytes are canonical and self-delimiting. */
	mp_reader_init(&rs, out, w.len);
	CHECK(mp_skip(&rs) && rs.pos == w.len);
	mp_reader_init(&r, out, w.len);
	mp_writer_init(&w2, again, sizeof(again));
	CHECK(reenc(&r, &w2, 0) && !w2.overflow);
	CHECK(w2.len == w.len && !memcmp(again, out, w.len));

	/* A writer one byte too small says so instead of writing past its end. */
	if (w.len) {
		mp_reader_init(&r, out, w.len);
		mp_writer_init(&w2, again, w.len - 1);
		reenc(&r, &w2, 0);
		CHECK(w2.overflow && w2.len <= w.len - 1);
	}
	return 0;
}
