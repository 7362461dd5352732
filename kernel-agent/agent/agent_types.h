/*
 * Fixed-width types for the agent. A kernel build (-ffreestanding -nostdinc)
 * gets them from the compiler's predefined macros; a host build (the codec
 * tests) from the C library, so the two never disagree.
 */
#ifndef AGENT_TYPES_H
#define AGENT_TYPES_H

#if __STDC_HOSTED__
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#else
typedef __UINT8_TYPE__ uint8_t;
typedef __UINT16_TYPE__ uint16_t;
typedef __UINT32_TYPE__ uint32_t;
typedef __UINT64_TYPE__ uint64_t;
typedef __INT8_TYPE__ int8_t;
typedef __INT16_TYPE__ int16_t;
typedef __INT32_TYPE__ int32_t;
typedef __INT64_TYPE__ int64_t;
typedef __SIZE_TYPE__ size_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)
#endif

#endif
