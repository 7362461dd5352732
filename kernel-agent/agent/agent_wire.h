/*
 * The agent's framing: 00 COBS(body + CRC32(body) LE) 00, and a byte-at-a-time
 * decoder with the same rules as protocols/agent_wire.py (AGENT_PROTOCOL.md).
 * No allocation: the caller owns every buffer.
 */
#ifndef AGENT_WIRE_H
#define AGENT_WIRE_H

#include "agent_types.h"

/* Largest decoded frame (msgpack body + 4-byte CRC) the agent sends. */
#define AGENT_MAX_FRAME 4608
/* Largest decoded frame the agent accepts (requests are small). */
#define AGENT_MAX_REQUEST 512
/* COBS output bound for n payload bytes, without the delimiters. */
#define AGENT_COBS_MAX(n) ((n) + (n) / 254 + 1)

uint32_t agent_crc32(uint32_t crc, const void *data, size_t len);

/* Encodes len bytes; returns the encoded length or 0 if out_cap is too small. */
size_t agent_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t out_cap);
/* Decodes in place-safe (out may equal in); returns length or -1 if damaged. */
long agent_cobs_decode(const uint8_t *in, size_t len, uint8_t *out);

/* Sink for encoded frame bytes. */
typedef void (*agent_write_fn)(void *ctx, const uint8_t *buf, size_t len);
/*
 * Appends the CRC to body (body must have 4 bytes of room after len) and
 * writes 00 COBS(...) 00 through write, a block at a time (no second buffer).
 */
void agent_frame_write(uint8_t *body, size_t len, agent_write_fn write, void *ctx);

/* Called for an intact frame's body, and for each byte outside frames. */
typedef void (*agent_frame_fn)(void *ctx, const uint8_t *body, size_t len);
typedef void (*agent_text_fn)(void *ctx, uint8_t byte);

/*
 * A frame assembled COBS block by block as its bytes come, without a buffer of
 * its own: how many bytes it decoded to, the CRC of all but the last four, and
 * those four. At each block's end the bytes so far are checked as a whole frame.
 */
struct agent_frame_check {
	uint32_t crc; /* agent_crc32 of the decoded bytes before the last four */
	uint8_t tail[4]; /* the last four decoded bytes, tail[n % 4] the oldest */
	size_t n; /* bytes decoded (a block's implied zero counted when the next begins) */
	uint8_t left; /* bytes left in the current block; 0: the next byte is a code */
	bool pending_zero; /* the last block stands for a zero, if another follows */
	bool dead; /* too long for a frame */
};

struct agent_frame_decoder {
	uint8_t *buf; /* AGENT_COBS_MAX(max_frame) bytes, owned by the caller */
	size_t cap;
	size_t len;
	size_t max_frame;
	bool in_frame;
	/*
	 * A frame was delivered at its last block, before its closing delimiter: a
	 * zero next is that delimiter. Outside a frame, buf holds the text since the
	 * last frame or zero, and shadow[k] checks it from byte k for a frame whose
	 * opening delimiter was lost (k = 0) or changed into another value (k = 1).
	 */
	bool after_frame;
	bool text_over; /* the text run outgrew buf: no frame in it */
	struct agent_frame_check check;
	struct agent_frame_check shadow[2];
	uint32_t dropped; /* damaged candidates */
	agent_frame_fn on_frame;
	agent_text_fn on_text;
	/* Optional: a damaged candidate's first decoded bytes (up to 16), for a NAK. */
	agent_frame_fn on_damaged;
	void *ctx;
};

void agent_frame_decoder_init(struct agent_frame_decoder *d, uint8_t *buf, size_t max_frame,
			      agent_frame_fn on_frame, agent_text_fn on_text, void *ctx);
void agent_frame_decoder_feed(struct agent_frame_decoder *d, uint8_t byte);
/*
 * Decodes COBS as far as it goes before damage (a zero code, a block past the
 * end: its bytes up to the end are kept), at most cap bytes; returns the count.
 */
size_t agent_cobs_decode_prefix(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
/* How many decoded bytes of a damaged candidate on_damaged gets. */
#define AGENT_DAMAGED_PREFIX 16

#endif
