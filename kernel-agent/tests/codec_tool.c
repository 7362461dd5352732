/*
 * Host build of the agent's codec, driven line by line from stdin so that
 * tests/unit/test_agent_vectors.py can check it against protocols/agent_vectors.json:
 *
 *	crc HEX        -> 8 hex digits
 *	cobs HEX       -> encoded HEX
 *	uncobs HEX     -> decoded HEX, or "error"
 *	frame HEX      -> the whole frame (00 ... 00) for body HEX
 *	feed HEX       -> one line per event: "frame HEX" or "text HEX", then "end"
 *	mpdump HEX     -> the value as canonical text, or "error"
 *	mpreenc HEX    -> the value re-encoded by the writer, as HEX
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_msgpack.h"
#include "agent_wire.h"

#define MAX_BYTES 70000

static uint8_t in[MAX_BYTES], out[MAX_BYTES * 2];
static char line[MAX_BYTES * 2 + 64];

static size_t unhex(const char *s, uint8_t *dst)
{
	size_t n = 0;
	unsigned v;

	while (s[0] && s[1] && sscanf(s, "%2x", &v) == 1) {
		dst[n++] = (uint8_t)v;
		s += 2;
	}
	return n;
}

static void puthex(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", p[i]);
}

static void hex_sink(void *ctx, const uint8_t *buf, size_t len)
{
	(void)ctx;
	puthex(buf, len);
}

/* -- feed: events of the frame decoder ------------------------------------- */

static uint8_t text_buf[MAX_BYTES];
static size_t text_len;

static void flush_text(void)
{
	if (text_len) {
		printf("text ");
		puthex(text_buf, text_len);
		printf("\n");
		text_len = 0;
	}
}

static void on_frame(void *ctx, const uint8_t *body, size_t len)
{
	(void)ctx;
	flush_text();
	printf("frame ");
	puthex(body, len);
	printf("\n");
}

static void on_text(void *ctx, uint8_t byte)
{
	(void)ctx;
	text_buf[text_len++] = byte;
}

/* -- msgpack ------------------------------------------------------------------ */

static bool dump(struct mp_reader *r, int depth)
{
	struct mp_item it;

	if (depth > 16 || !mp_read(r, &it))
		return false;
	switch (it.type) {
	case MP_NIL: printf("nil"); return true;
	case MP_BOOL: printf(it.v.b ? "true" : "false"); return true;
	case MP_UINT: printf("%llu", (unsigned long long)it.v.u); return true;
	case MP_INT: printf("%lld", (long long)it.v.i); return true;
	case MP_STR:
		/* Printable ASCII as is, anything else (quotes, newlines, UTF-8) escaped. */
		putchar('"');
		for (uint32_t i = 0; i < it.v.bytes.len; i++) {
			uint8_t c = it.v.bytes.data[i];

			if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
				putchar(c);
			else
				printf("\\x%02x", c);
		}
		putchar('"');
		return true;
	case MP_BIN: printf("b:"); puthex(it.v.bytes.data, it.v.bytes.len); return true;
	case MP_ARRAY:
	case MP_MAP: {
		bool map = it.type == MP_MAP;

		printf(map ? "{" : "[");
		for (uint32_t i = 0; i < it.v.n; i++) {
			if (i)
				printf(",");
			if (!dump(r, depth + 1))
				return false;
			if (map) {
				printf(":");
				if (!dump(r, depth + 1))
					return false;
			}
		}
		printf(map ? "}" : "]");
		return true;
	}
	default: printf("other"); return true;
	}
}

static bool reenc(struct mp_reader *r, struct mp_writer *w, int depth)
{
	struct mp_item it;

	if (depth > 16 || !mp_read(r, &it))
		return false;
	switch (it.type) {
	case MP_NIL: mp_write_nil(w); return true;
	case MP_BOOL: mp_write_bool(w, it.v.b); return true;
	case MP_UINT: mp_write_uint(w, it.v.u); return true;
	case MP_INT: mp_write_int(w, it.v.i); return true;
	case MP_STR: mp_write_str(w, (const char *)it.v.bytes.data, it.v.bytes.len); return true;
	case MP_BIN: mp_write_bin(w, it.v.bytes.data, it.v.bytes.len); return true;
	case MP_ARRAY:
	case MP_MAP: {
		uint32_t n = it.v.n * (it.type == MP_MAP ? 2 : 1);

		if (it.type == MP_MAP)
			mp_write_map(w, it.v.n);
		else
			mp_write_array(w, it.v.n);
		for (uint32_t i = 0; i < n; i++)
			if (!reenc(r, w, depth + 1))
				return false;
		return true;
	}
	default: return false;
	}
}

int main(void)
{
	static uint8_t decoder_buf[AGENT_COBS_MAX(AGENT_MAX_FRAME)];

	while (fgets(line, sizeof(line), stdin)) {
		char *arg = strchr(line, ' ');
		size_t n;

		line[strcspn(line, "\n")] = 0;
		if (!arg) {
			printf("error\n");
			continue;
		}
		*arg++ = 0;
		n = unhex(arg, in);
		if (!strcmp(line, "crc")) {
			printf("%08x\n", agent_crc32(0, in, n));
		} else if (!strcmp(line, "cobs")) {
			size_t m = agent_cobs_encode(in, n, out, sizeof(out));

			puthex(out, m);
			printf("\n");
		} else if (!strcmp(line, "uncobs")) {
			long m = agent_cobs_decode(in, n, out);

			if (m < 0)
				printf("error");
			else
				puthex(out, (size_t)m);
			printf("\n");
		} else if (!strcmp(line, "frame")) {
			/* agent_frame_write appends the CRC in place: in has the room. */
			agent_frame_write(in, n, hex_sink, NULL);
			printf("\n");
		} else if (!strcmp(line, "feed")) {
			struct agent_frame_decoder d;

			agent_frame_decoder_init(&d, decoder_buf, AGENT_MAX_FRAME, on_frame, on_text, NULL);
			for (size_t i = 0; i < n; i++)
				agent_frame_decoder_feed(&d, in[i]);
			flush_text();
			printf("end %u\n", d.dropped);
		} else if (!strcmp(line, "mpdump")) {
			struct mp_reader r;

			mp_reader_init(&r, in, n);
			if (!dump(&r, 0) || r.pos != n)
				printf(" error");
			printf("\n");
		} else if (!strcmp(line, "mpreenc")) {
			struct mp_reader r;
			struct mp_writer w;

			mp_reader_init(&r, in, n);
			mp_writer_init(&w, out, sizeof(out));
			if (!reenc(&r, &w, 0) || w.overflow)
				printf("error");
			else
				puthex(out, w.len);
			printf("\n");
		} else {
			printf("error\n");
		}
		fflush(stdout);
	}
	return 0;
}
