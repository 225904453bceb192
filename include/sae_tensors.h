/* sae_tensors.h: an SAE's tensors from one safetensors file, for the formats that keep them so
 * (SAELens's sae_weights.safetensors, sparsify's sae.safetensors): the architecture's tensors by
 * name and shape, every other tensor refused (as the trainers' strict load_state_dict does),
 * F32 tensors used in place, F16/BF16 checked now and converted once per node. */
#ifndef SAEGAP_SAE_TENSORS_H
#define SAEGAP_SAE_TENSORS_H

#include "sae_format.h"

/* The names a format gives the encoder: SAELens W_enc (d_in, d_sae) and b_enc; sparsify the
 * Linear layer encoder.weight (d_sae, d_in), read transposed, and encoder.bias. */
typedef struct {
    const char *file;              /* in the SAE's folder */
    const char *enc_w, *enc_b;
    int enc_out_in;                /* enc_w is (d_sae, d_in) */
    const char *trainer;           /* named when a tensor is refused: "SAELens", "sparsify" */
} SaeTensorNames;

/* Opens <dir>/<file> and sets the Sae's tensors for its architecture (d_in, d_sae, arch read
 * before). 0 or -1 with a pending error naming the file. */
int sae_tensors_open(Sae *s, const SaeTensorNames *names);

/* The format rows' floats, place and weights_file of a safetensors SAE. */
size_t sae_tensors_floats(const Sae *s);
size_t sae_tensors_zeroed_from(const Sae *s);
void sae_tensors_place(Sae *s, float *block, int fill, int part, int parts);
SaeWeightsFile sae_tensors_file(const Sae *s);

#endif
