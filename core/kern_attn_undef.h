/* kern_attn_undef.h — private to core/kern_attn.c: forgets one instruction set's parameters of
 * kern_attn_impl.h (KA_*, V_*, VW, vf) before the next set defines its own. */
#undef KA_SFX
#undef KA_TGT
#undef VW
#undef vf
#undef V_LOAD
#undef V_STORE
#undef V_SET1
#undef V_ZERO
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_FMA
#undef V_MAX
#undef V_EXP
#undef V_NINF_IF_GT
#undef V_ZERO_IF_NINF
#undef KA_NKEY
#undef KA_NV
#undef KA_RG
#undef KA_DV
