// embtab/rerank.hpp: calibrated top-k reranking (Steck, RecSys 2018) and a batched top-k.
//
// The objective. For one user with target distribution p over G categories and C candidates
// with scores s_c and category distributions w_c, the greedy builds a list L one item at a
// time; at step t (|L| = t) it adds the unpicked candidate c that maximises
//
//     F(L + c) = (1 - lam) * sum_{i in L+c} s_i  -  lam * KL(p || q~(L + c)),
//     q(L)     = mean of w_i over i in L,     q~ = (1 - alpha) * q + alpha * p,
//     KL(p||r) = sum_{g : p_g > 0} p_g * ln(p_g / r_g)          (natural log; p_g = 0 adds 0).
//
// How it is computed. Only the categories of c change between F(L + c) and the value shared
// by every candidate at this step. With W_g the summed weight of category g in L and
// o_g = (1-alpha) W_g + alpha p_g (t+1) (the list's smoothed mass at size t+1, times t+1),
//
//     F(L + c) = const_t + (1-lam) s_c + sum_{g in c} lam p_g ln(1 + (1-alpha) w_cg / o_g).
//
// Item weights take few distinct values (1, 1/2, 1/3 for items with 1-3 categories), so each
// step fills a small table T[e] = lam p_g ln(1 + r), r = (1-alpha) w_d * (1 / o_g) (one
// division per category; within 2 ulp of the exact ratio), one entry per (category g, distinct
// weight w_d), and each candidate holds a fixed-width list of table slots (padding points at
// T[0] = 0; up to 4 slots pack into one 8-byte load). In a batch the slots are precomputed per
// item (ItemKeys; a candidate's are copied when the scan first reaches it) and T is one dense
// weight-major block whose ratios and logs are one vector pass (ratio_log_block); a single
// call with few users compacts the keys per user instead. A batch also prefetches the next
// user's rows, a slice per step.
// Each step computes the candidates' values (gathers and adds), then the first maximum. When a
// row's scores are non-increasing (a first-stage top-C returns them so), the scan goes in
// chunks and stops once no later candidate can reach the best even with the largest possible
// table sum: by weight pattern (pattern_bound: an item with m categories of weight w_d adds at
// most the m largest entries of that weight) or, failing that, by the largest entries per
// category (T >= 0; either bound is exact up to a 1e-12 relative slack that covers rounding).
// Scores are read as double (float32 widens exactly); there is no fast-math and no float32
// arithmetic, and the result does not depend on which scan ran. The table's logs ln(1 + r) are
// embtab's vlog (vlog.hpp: fdlibm's algorithm, within 1 ulp of the C library's); the vector
// code runs 8 lanes (AVX-512), 4 (AVX2) or the baseline ISA, chosen at run time, with the same
// bits on every path (tests cap the dispatch to check it); the rare overflow and alpha == 0
// forms use std::log.
//
// Special values (the contract the Python layer documents):
//   * lam == 0: plain top-k by score, ties to the lower candidate index.
//   * scores of -inf: such a candidate is picked only once every finite-score candidate is in
//     the list; among them the greedy uses the KL term alone (their score term is dropped).
//   * NaN or +inf scores, candidate ids outside [0, n_items): a RerankError (no exception).
//   * alpha == 0 (lam > 0): while some category with p_g > 0 is absent from the list, KL is
//     +inf; a candidate whose addition covers every such category beats one that does not
//     (the objective is -inf otherwise); if none does, every value is -inf and the lowest
//     unpicked index wins, as ties do.
//
// Concurrency: every function here is a pure function of its arguments; outputs are written
// per user, so results do not depend on num_threads.
//
// Components (each its own header under embtab/rerank/): types.hpp (inputs, status, constants),
// keys.hpp (a batch's per-item table keys and the weight-pattern bound), scan.hpp (score pass and
// the scans of a step), topk.hpp (row-wise top-k), greedy.hpp (calibrated_user, calibrated_batch);
// the CPU dispatch is embtab/cpu.hpp, the log embtab/vlog.hpp.
#pragma once

#include "embtab/rerank/greedy.hpp"
#include "embtab/rerank/keys.hpp"
#include "embtab/rerank/scan.hpp"
#include "embtab/rerank/topk.hpp"
#include "embtab/rerank/types.hpp"
