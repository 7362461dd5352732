/*
 * The msgpack subset the agent speaks: nil, bool, integers, str, bin, array,
 * map. The writer always picks the shortest encoding (as msgpack-python
 * does); the reader accepts every encoding of those types.
 */
#ifndef AGENT_MSGPACK_H
#define AGENT_MSGPACK_H

#include "agent_types.h"

struct mp_writer {
	uint8_t *buf;
	size_t cap;
	size_t len;
	bool overflow; /* set once a write did not fit; later writes are dropped */
};

void mp_writer_init(struct mp_writer *w, uint8_t *buf, size_t cap);
void mp_write_nil(struct mp_writer *w);
void mp_write_bool(struct mp_writer *w, bool v);
void mp_write_uint(struct mp_writer *w, uint64_t v);
void mp_write_int(struct mp_writer *w, int64_t v);
void mp_write_str(struct mp_writer *w, const char *s, size_t len);
void mp_write_cstr(struct mp_writer *w, const char *s);
void mp_write_bin(struct mp_writer *w, const void *data, size_t len);
/* Writes a bin header for len bytes and returns where they go (NULL if no room). */
uint8_t *mp_write_bin_reserve(struct mp_writer *w, size_t len);
void mp_write_array(struct mp_writer *w, uint32_t n);
void mp_write_map(struct mp_writer *w, uint32_t n);

enum mp_type {
	MP_NIL,
	MP_BOOL,
	MP_UINT,
	MP_INT, /* negative */
	MP_STR,
	MP_BIN,
	MP_ARRAY,
	MP_MAP,
	MP_OTHER, /* float, ext: well-formed but outside the subset */
};

struct mp_reader {
	const uint8_t *buf;
	size_t len;
	size_t pos;
};

/* One decoded item; str/bin point into the reader's buffer. */
struct mp_item {
	enum mp_type type;
	union {
		bool b;
		uint64_t u;
		int64_t i;
		uint32_t n; /* array or map count */
		struct {
			const uint8_t *data;
			uint32_t len;
		} bytes;
	} v;
};

void mp_reader_init(struct mp_reader *r, const uint8_t *buf, size_t len);
/* Reads one item header; returns false on truncated or invalid input. */
bool mp_read(struct mp_reader *r, struct mp_item *item);
/* Skips one complete value (with its elements); false if malformed or too deep. */
bool mp_skip(struct mp_reader *r);

#endif
