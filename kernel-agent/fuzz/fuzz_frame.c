/*
 * libFuzzer harness over the agent's framing (agent_wire.c): the byte-at-a-time
 * frame decoder, COBS and the CRC (AGENT_PROTOCOL.md, "Framing").
 *
 * Properties, beyond "no sanitizer report":
 *  - every frame the decoder hands out holds 1..max_frame-4 body bytes, and
 *    written again with agent_frame_write it decodes to exactly that body;
 *  - bytes that are neither frames nor delimiters reach the text callback,
 *    never more bytes than were fed;
 *  - COBS: encode never writes a zero and decode(encode(x)) == x; decoding
 *    in place gives what decoding into another buffer gives;
 *  - the CRC can be computed in two pieces.
 */
#include <stdint.h>
#include <string.h>

#include "agent_wire.h"
#include "fuzz_common.h"

#define MAX_INPUT 8192

struct events {
	size_t max_body;
	size_t frames, text;
	bool split; /* the frame re-decoded began with a frame of its own */
	const uint8_t *expect; /* for the re-decoded frame: the body it must give */
	size_t expect_len;
};

static uint8_t frame_copy[AGENT_MAX_FRAME + 4];
static uint8_t written[AGENT_COBS_MAX(AGENT_MAX_FRAME) + 2];
static size_t written_len;

static void sink(void *ctx, const uint8_t *buf, size_t len)
{
	(void)ctx;
	CHECK(written_len + len <= sizeof(written));
	memcpy(written + written_len, buf, len);
	written_len += len;
}

static void on_redecoded(void *ctx, const uint8_t *body, size_t len)
{
	struct events *e = ctx;

	/*
	 * The body itself, or (a body that begins with a frame of its own: a prefix and
	 * its CRC at a block's end, delivered there) that prefix first.
	 */
	CHECK(e->expect && len <= e->expect_len && !memcmp(body, e->expect, len));
	if (len < e->expect_len)
		e->split = true;
	e->frames++;
}

static void on_text(void *ctx, uint8_t byte)
{
	struct events *e = ctx;

	(void)byte;
	e->text++;
}

static void on_frame(void *ctx, const uint8_t *body, size_t len)
{
	static uint8_t buf[AGENT_COBS_MAX(AGENT_MAX_FRAME)];
	struct events *e = ctx;
	struct events again = { .max_body = e->max_body, .expect = frame_copy, .expect_len = len };
	struct agent_frame_decoder d;

	CHECK(len >= 1 && len <= e->max_body);
	e->frames++;
	memcpy(frame_copy, body, len);
	written_len = 0;
	/* agent_frame_write appends the CRC in place: the copy has 4 bytes of room. */
	static uint8_t body_room[AGENT_MAX_FRAME + 4];
	memcpy(body_room, body, len);
	agent_frame_write(body_room, len, sink, NULL);
	CHECK(written_len >= len + 6 && written[0] == 0 && written[written_len - 1] == 0);
	for (size_t i = 1; i + 1 < written_len; i++)
		CHECK(written[i] != 0);
	agent_frame_decoder_init(&d, buf, e->max_body + 4, on_redecoded, on_text, &again);
	for (size_t i = 0; i < written_len; i++)
		agent_frame_decoder_feed(&d, written[i]);
	CHECK(again.split || (again.frames == 1 && again.text == 0 && d.dropped == 0));
}

static void decode_stream(const uint8_t *data, size_t size, size_t max_frame)
{
	static uint8_t buf[AGENT_COBS_MAX(AGENT_MAX_FRAME)];
	struct events e = { .max_body = max_frame - 4 };
	struct agent_frame_decoder d;

	agent_frame_decoder_init(&d, buf, max_frame, on_frame, on_text, &e);
	for (size_t i = 0; i < size; i++)
		agent_frame_decoder_feed(&d, data[i]);
	CHECK(e.text <= size);
	/*
	 * A frame is at least 6 COBS bytes (5 decoded), each its own; its delimiters may
	 * have been lost, and a frame found in text (its opening 00 lost) was text first.
	 */
	CHECK(e.frames * 6 <= size);
}

static void cobs(const uint8_t *data, size_t size)
{
	static uint8_t enc[AGENT_COBS_MAX(MAX_INPUT)], dec[MAX_INPUT], in_place[MAX_INPUT];
	size_t n = agent_cobs_encode(data, size, enc, sizeof(enc));

	CHECK(n >= 1 && n <= AGENT_COBS_MAX(size));
	CHECK(memchr(enc, 0, n) == NULL);
	CHECK(agent_cobs_encode(data, size, enc, n - 1) == 0); /* one byte short: refused */
	CHECK(agent_cobs_encode(data, size, enc, n) == n);
	CHECK(agent_cobs_decode(enc, n, dec) == (long)size && !memcmp(dec, data, size));

	/* The input itself as an encoding: out of place and in place agree. */
	long m = agent_cobs_decode(data, size, dec);

	memcpy(in_place, data, size);
	CHECK(agent_cobs_decode(in_place, size, in_place) == m);
	if (m >= 0) {
		CHECK((size_t)m <= size);
		CHECK(!memcmp(in_place, dec, (size_t)m));
	}
}

static void crc(const uint8_t *data, size_t size)
{
	size_t split = size ? data[0] % (size + 1) : 0;
	uint32_t whole = agent_crc32(0, data, size);

	CHECK(agent_crc32(agent_crc32(0, data, split), data + split, size - split) == whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > MAX_INPUT)
		return 0;
	decode_stream(data, size, AGENT_MAX_REQUEST); /* the agent's receiver */
	/* A receiver with a small bound (5..68 bytes, chosen by the first byte), so that
	 * frames at and past any bound are reached by short inputs too. */
	if (size)
		decode_stream(data + 1, size - 1, 5 + data[0] % 64);
	cobs(data, size);
	crc(data, size);
	return 0;
}
