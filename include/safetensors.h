/* safetensors.h: read-only, validated views of a .safetensors file (mmap, no copies).
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
 * then the data block; offsets are relative to the start of the data block.
 * Validated as the reference implementation (huggingface/safetensors) does: header length
 * within bounds, valid JSON object, known dtype, dtype x shape == byte size, tensors covering
 * the data block back to back with no gaps or overlaps, and the block ending at end of file.
 * Every count, shape product and offset is checked for overflow (error.h); duplicate names are
 * found by sorting, so the cost is n log n in the number of tensors (a header of a million
 * tensors is parsed or refused in seconds). Knows nothing about GPT-2 or SAEs.
 */
#ifndef SAEGAP_SAFETENSORS_H
#define SAEGAP_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32,
    ST_I64, ST_U64, ST_F64, ST_F8_E4M3, ST_F8_E5M2, ST_DTYPE_COUNT
} SafetensorsDtype;

#define ST_MAX_DIMS 8

typedef struct {
    char *name;                 /* owned by the Safetensors (its arena) */
    SafetensorsDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data; /* points into the mapping */
    const char *file; /* the file holding it (a shard's path in a sharded set) */
} SafetensorsTensor;

typedef struct Safetensors {
    char *path;
    void *map;          /* whole file, PROT_READ */
    size_t map_size;
    size_t n_tensors;
    SafetensorsTensor *tensors; /* in header order */
    size_t *by_name;            /* indices into tensors, sorted by name (lookups in log n) */
    char *arena;                /* the tensors' names, decoded from the header */
    struct Safetensors *shards; /* a sharded set (safetensors_open_sharded): the files, each */
    size_t n_shards;            /* opened and validated on its own; map is NULL then */
} Safetensors;

const char *safetensors_dtype_name(SafetensorsDtype dt);

/* IEEE half to float, exactly (subnormals, infinities, NaN payloads); also used for .npz members. */
float safetensors_f16_to_f32(uint16_t h);

/* Returns 0, or -1 with a pending error naming the path (error.h). Zeroed struct on failure. */
int safetensors_open(Safetensors *st, const char *path);
void safetensors_close(Safetensors *st); /* accepts a zeroed struct */

/* A Hugging Face sharded checkpoint as one Safetensors: index_path is model.safetensors.index.json,
 * whose "weight_map" maps each tensor name to a shard file in the same folder. Every shard is
 * opened and validated as a file of its own; a name in two shards, a shard name with a path in
 * it, or a weight_map entry its shard does not hold is refused naming the file. Tensors keep
 * their shard's path (SafetensorsTensor.file) for messages; map_size is the shards' total. */
int safetensors_open_sharded(Safetensors *st, const char *index_path);

/* Sorts st->by_name (allocated, n_tensors entries) by name; returns a name that appears twice,
 * else NULL. */
const char *safetensors_sort_names(Safetensors *st);

/* NULL when absent. */
const SafetensorsTensor *safetensors_find(const Safetensors *st, const char *name);

/* Converts F32/F16/BF16 to float32 (out holds t->numel floats). Refuses other dtypes and
 * any NaN/Inf, naming the tensor. Returns 0 or -1 with a pending error. */
int safetensors_to_f32(float *out, const Safetensors *st, const SafetensorsTensor *t);

/* Float32 views for the compute path. An F32 tensor aligned in the file is used in place: the
 * page cache holds it once for every rank of a node, where a copy would cost each rank its size.
 * safetensors_f32 points *dst into the mapping then, else converts into owned (t->numel
 * floats, needed only when !safetensors_is_f32_view(t)); either way it refuses NaN/Inf naming
 * the tensor. Returns 0 or -1 with a pending error. */
int safetensors_is_f32_view(const SafetensorsTensor *t);
int safetensors_f32(const float **dst, float *owned, const Safetensors *st, const SafetensorsTensor *t);
/* What safetensors_to_f32 would refuse, without converting (dtype, NaN/Inf): lets a loader
 * validate on every rank and convert once per node (nodeblock.h). */
int safetensors_check_f32(const Safetensors *st, const SafetensorsTensor *t);

/* Tensors a loader checked (safetensors_check_f32) and converts later into one block: each at
 * a 64-byte aligned offset. safetensors_pending_floats is the block's size; safetensors_place
 * points every *dst into block and converts part `part` of `parts` of every tensor's elements
 * (the ranks of a node each convert their part of a node block, nodeblock.h; part < 0: point
 * only), on the rank's threads. Values were checked, so a failure here means the file changed.
 * Both release the file pages of what they read (madvise): a converted tensor is counted once,
 * as float32, not also as its mapped file. */
typedef struct {
    const SafetensorsTensor *t;
    const float **dst;
} SafetensorsPending;
size_t safetensors_pending_floats(const SafetensorsPending *p, size_t n);
void safetensors_place(float *block, const Safetensors *st, const SafetensorsPending *p, size_t n, int part,
                       int parts);

/* update(state, bytes, n) over [map, map + n) of a read-only file mapping (a Safetensors' or an
 * Npz's), in slices whose pages are released once hashed (as safetensors_place releases what it
 * converted): hashing a checkpoint does not leave it counted in the rank's memory. A tensor used
 * in place faults its pages back from the page cache when it is read. */
void safetensors_hash_release(void (*update)(void *, const void *, size_t), void *state, const void *map, size_t n);

/* Checks a tensor's presence, float dtype and shape; ndim entries of shape. */
int safetensors_expect(const Safetensors *st, const char *name, const SafetensorsTensor **out, int ndim,
                       const int64_t *shape);

#endif
