/* Framing of the agent protocol: CRC-32, COBS, the frame decoder. */
#include "agent_wire.h"

/* CRC-32/ISO-HDLC (zlib's), reflected polynomial 0xEDB88320, a nibble at a time. */
static const uint32_t crc_nibble[16] = {
	0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4,
	0x4db26158, 0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
	0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
};

uint32_t agent_crc32(uint32_t crc, const void *data, size_t len)
{
	const uint8_t *p = data;

	crc = ~crc;
	while (len--) {
		crc ^= *p++;
		crc = (crc >> 4) ^ crc_nibble[crc & 0xf];
		crc = (crc >> 4) ^ crc_nibble[crc & 0xf];
	}
	return ~crc;
}

/*
 * Blocks end at a zero byte (consumed) or after 254 non-zero bytes; the last
 * block is always written unless it would be empty after a full block.
 * Calls emit(code, bytes, n) per block.
 */
typedef void (*cobs_block_fn)(void *ctx, uint8_t code, const uint8_t *bytes, size_t n);

static void cobs_blocks(const uint8_t *in, size_t len, cobs_block_fn emit, void *ctx)
{
	size_t pos = 0;

	for (;;) {
		size_t run = 0;

		while (pos + run < len && run < 254 && in[pos + run] != 0)
			run++;
		emit(ctx, (uint8_t)(run + 1), in + pos, run);
		pos += run;
		if (pos == len)
			return;
		if (run == 254)
			continue; /* a full block: no zero to consume */
		pos++; /* the zero this block stands for */
	}
}

struct cobs_buffer {
	uint8_t *out;
	size_t cap;
	size_t len;
	bool overflow;
};

static void cobs_to_buffer(void *ctx, uint8_t code, const uint8_t *bytes, size_t n)
{
	struct cobs_buffer *b = ctx;

	if (b->overflow || b->len + 1 + n > b->cap) {
		b->overflow = true;
		return;
	}
	b->out[b->len++] = code;
	for (size_t i = 0; i < n; i++)
		b->out[b->len++] = bytes[i];
}

size_t agent_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t out_cap)
{
	struct cobs_buffer b = { out, out_cap, 0, false };

	cobs_blocks(in, len, cobs_to_buffer, &b);
	return b.overflow ? 0 : b.len;
}

long agent_cobs_decode(const uint8_t *in, size_t len, uint8_t *out)
{
	size_t i = 0, o = 0;

	while (i < len) {
		uint8_t code = in[i];

		if (code == 0 || i + code > len)
			return -1;
		for (size_t k = 1; k < code; k++) {
			if (in[i + k] == 0)
				return -1;
			out[o++] = in[i + k];
		}
		i += code;
		if (code != 0xff && i < len)
			out[o++] = 0;
	}
	return (long)o;
}

struct frame_sink {
	agent_write_fn write;
	void *ctx;
};

static void cobs_to_sink(void *ctx, uint8_t code, const uint8_t *bytes, size_t n)
{
	struct frame_sink *s = ctx;

	s->write(s->ctx, &code, 1);
	if (n)
		s->write(s->ctx, bytes, n);
}

void agent_frame_write(uint8_t *body, size_t len, agent_write_fn write, void *ctx)
{
	static const uint8_t delimiter = 0;
	uint32_t crc = agent_crc32(0, body, len);
	struct frame_sink sink = { write, ctx };

	body[len + 0] = (uint8_t)crc;
	body[len + 1] = (uint8_t)(crc >> 8);
	body[len + 2] = (uint8_t)(crc >> 16);
	body[len + 3] = (uint8_t)(crc >> 24);
	write(ctx, &delimiter, 1);
	cobs_blocks(body, len + 4, cobs_to_sink, &sink);
	write(ctx, &delimiter, 1);
}

static void check_reset(struct agent_frame_check *c)
{
	c->crc = 0;
	c->n = 0;
	c->left = 0;
	c->pending_zero = false;
	c->dead = false;
}

static void check_push(struct agent_frame_check *c, uint8_t byte)
{
	if (c->n >= 4)
		c->crc = agent_crc32(c->crc, &c->tail[c->n % 4], 1);
	c->tail[c->n % 4] = byte;
	c->n++;
}

/*
 * One more non-zero byte of an encoded frame: true when it ends a block after
 * which the bytes decoded so far are a whole frame (size and CRC).
 */
static bool check_byte(struct agent_frame_check *c, uint8_t byte, size_t max_frame)
{
	if (c->dead)
		return false;
	if (c->left == 0) {
		if (c->pending_zero)
			check_push(c, 0);
		c->left = (uint8_t)(byte - 1);
		c->pending_zero = byte != 0xff;
	} else {
		check_push(c, byte);
		c->left--;
	}
	if (c->n > max_frame) {
		c->dead = true;
		return false;
	}
	if (c->left || c->n < 5)
		return false;
	uint32_t crc = (uint32_t)c->tail[c->n % 4] | (uint32_t)c->tail[(c->n + 1) % 4] << 8 |
		       (uint32_t)c->tail[(c->n + 2) % 4] << 16 |
		       (uint32_t)c->tail[(c->n + 3) % 4] << 24;

	return c->crc == crc;
}

static void text_reset(struct agent_frame_decoder *d)
{
	d->len = 0;
	d->text_over = false;
	check_reset(&d->shadow[0]);
	check_reset(&d->shadow[1]);
}

void agent_frame_decoder_init(struct agent_frame_decoder *d, uint8_t *buf, size_t max_frame,
			      agent_frame_fn on_frame, agent_text_fn on_text, void *ctx)
{
	d->buf = buf;
	d->cap = AGENT_COBS_MAX(max_frame);
	d->len = 0;
	d->max_frame = max_frame;
	d->in_frame = false;
	d->after_frame = false;
	check_reset(&d->check);
	text_reset(d);
	d->dropped = 0;
	d->on_frame = on_frame;
	d->on_text = on_text;
	d->on_damaged = NULL;
	d->ctx = ctx;
}

size_t agent_cobs_decode_prefix(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
	size_t i = 0, o = 0;

	while (i < len && o < cap) {
		uint8_t code = in[i];

		if (code == 0)
			break;
		for (size_t k = 1; k < code && i + k < len && o < cap; k++) {
			if (in[i + k] == 0)
				return o;
			out[o++] = in[i + k];
		}
		i += code;
		if (code != 0xff && i < len && o < cap)
			out[o++] = 0;
	}
	return o;
}

static bool frame_close(struct agent_frame_decoder *d)
{
	uint8_t prefix[AGENT_DAMAGED_PREFIX];
	size_t prefix_len = 0;

	if (d->on_damaged)
		prefix_len = agent_cobs_decode_prefix(d->buf, d->len, prefix, sizeof(prefix));
	long n = agent_cobs_decode(d->buf, d->len, d->buf);

	d->len = 0;
	if (n < 5 || (size_t)n > d->max_frame)
		goto damaged;
	size_t body = (size_t)n - 4;
	const uint8_t *c = d->buf + body;
	uint32_t crc = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 |
		       (uint32_t)c[3] << 24;

	if (agent_crc32(0, d->buf, body) != crc)
		goto damaged;
	d->in_frame = false;
	d->on_frame(d->ctx, d->buf, body);
	return true;
damaged:
	if (d->on_damaged)
		d->on_damaged(d->ctx, prefix, prefix_len);
	return false;
}

/* The frame of the encoded bytes buf[from..len), checked whole: decoded in place, delivered. */
static void deliver(struct agent_frame_decoder *d, size_t from)
{
	long n = agent_cobs_decode(d->buf + from, d->len - from, d->buf);

	d->in_frame = false;
	d->after_frame = true;
	text_reset(d);
	if (n >= 5)
		d->on_frame(d->ctx, d->buf, (size_t)n - 4);
}

void agent_frame_decoder_feed(struct agent_frame_decoder *d, uint8_t byte)
{
	if (d->after_frame) {
		d->after_frame = false;
		if (byte == 0)
			return; /* the closing delimiter of the frame delivered at its last block */
	}
	if (!d->in_frame) {
		if (byte == 0) {
			uint8_t prefix[AGENT_DAMAGED_PREFIX];
			size_t n = agent_cobs_decode_prefix(d->buf, d->len, prefix, sizeof(prefix));

			d->in_frame = true;
			d->len = 0;
			check_reset(&d->check);
			text_reset(d);
			/*
			 * Text that starts as a message does (an array of 2 to 5) and is no
			 * frame: a damaged frame that lost its opening delimiter too.
			 */
			if (n && prefix[0] >= 0x92 && prefix[0] <= 0x95) {
				d->dropped++;
				if (d->on_damaged)
					d->on_damaged(d->ctx, prefix, n);
			}
			return;
		}
		if (d->on_text)
			d->on_text(d->ctx, byte);
		if (d->text_over || d->len == d->cap) {
			d->text_over = true;
			return;
		}
		d->buf[d->len++] = byte;
		/* A frame whose opening delimiter was lost (or changed: from the second byte). */
		if (check_byte(&d->shadow[0], byte, d->max_frame))
			deliver(d, 0);
		else if (d->len >= 2 && check_byte(&d->shadow[1], byte, d->max_frame))
			deliver(d, 1);
		return;
	}
	if (byte == 0) {
		/* An empty or damaged candidate: this zero opens the next one. */
		if (d->len && !frame_close(d))
			d->dropped++;
		if (!d->in_frame)
			text_reset(d);
		d->len = 0;
		check_reset(&d->check);
		return;
	}
	if (d->len == d->cap) {
		/* Longer than any frame: it was text after a lost delimiter. */
		if (d->on_text) {
			for (size_t i = 0; i < d->len; i++)
				d->on_text(d->ctx, d->buf[i]);
			d->on_text(d->ctx, byte);
		}
		d->in_frame = false;
		text_reset(d);
		return;
	}
	d->buf[d->len++] = byte;
	/* A whole frame at a block's end: delivered now, its closing zero or not. */
	if (check_byte(&d->check, byte, d->max_frame))
		deliver(d, 0);
}
