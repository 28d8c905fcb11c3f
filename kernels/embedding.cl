/* Token embedding: x = LN_d(Emb[id] * sqrt(d)) (decoder.embedding, decoder.layernorm1).
 * One work-group per token; the row lives in local memory (DMODEL floats).
 * ids_offset lets a greedy decode step read the token the previous step's
 * argmax left on the device. */
__kernel __attribute__((reqd_work_group_size(ROW_WG, 1, 1)))
void embed_tokens(__global const int *ids, const int ids_offset, __global const WT *emb, __global const ST *es,
                  const float scale,
                  __global const float *ln_w, __global const float *ln_b, __global float *x,
                  __global int *flags, const int flag_index)
{
    __local float row[DMODEL];
    __local float2 scratch[ROW_WG];
    const int t = get_group_id(0), lid = get_local_id(0);
    const idx_t base = (idx_t)ids[ids_offset + t] * EMB_PITCH;
    for (int i = lid; i < DMODEL; i += ROW_WG)
        row[i] = LOAD_W(emb, es, base + i) * scale;
    barrier(CLK_LOCAL_MEM_FENCE);
    const float stat = ln_local(row, DMODEL, ln_w, ln_b, scratch);
    for (int i = lid; i < DMODEL; i += ROW_WG)
        x[(idx_t)t * DMODEL + i] = row[i];
    if (lid == 0)
        flag_if_nonfinite(stat, flags, flag_index);
}
