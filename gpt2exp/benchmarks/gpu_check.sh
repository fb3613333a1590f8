#!/usr/bin/env bash
# Issue 23's GPU check for a lent GPU machine: the CUDA tests first, then the measurements; logs under
# $OUT. A session has 15 minutes of device time in all, machine start included, at most 10 per call,
# so the parts go by priority and each fits one call (run them one per call, a first):
#   ../shared/tools/gpu-kit                # here, once: packs .gpu/
#   device run, carry [".gpu"], timeout_s 600:  bash gpt2exp/benchmarks/gpu_check.sh [part]
# a (default, <= 9 min): `pytest -m cuda` (every CUDA-only path: tests/unit/test_cuda.py), then the eager
#    bench (training, decoding).
# b (<= 7 min): the compiled bench (training), then two identical compiled training runs (time to
#    first step, cold and from the compile cache).
# c (<= 4 min): xl training with activation checkpointing at batch 16, and the fused loss's chunk sizes.
# (torchrun on one GPU, over NCCL, is one of part a's tests, and FSDP2 over a one-rank NCCL group (test_fsdp.py);
# FSDP between GPUs needs a machine of several.)
set -u
OUT=${OUT:-outputs/gpu-check}
mkdir -p "$OUT"
. .gpu/setup || exit 1
SMALL=(model=small model.pad_vocab_to=64 bench.batch_size=16 bench.precision=bf16)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep the log, show its tail
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: rc=$? in $((SECONDS - start)) s"
  grep -v "^\[W\|Warning\|warn(" "$OUT/$name.log" | tail -n 45
}

loss_chunks() {  # fused head + loss forward and backward at 16 x 1024 tokens, by chunk rows
  python3 - <<'PY'
import time, torch, torch.nn.functional as F
import gpt2exp.loss as L
torch.manual_seed(0)
h = torch.randn(16 * 1024, 768, device="cuda", requires_grad=True)
t = torch.randint(0, 50257, (16 * 1024,), device="cuda")
def timed(fn, n=20):
    for _ in range(3): fn()
    torch.cuda.synchronize(); s = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - s) / n * 1e3
for vocab in (50257, 50304):
    w = torch.randn(vocab, 768, device="cuda", requires_grad=True)
    def plain():
        with torch.autocast("cuda", torch.bfloat16):
            F.cross_entropy(F.linear(h, w)[:, :50257].float(), t).backward()
    compiled = torch.compile(lambda: F.cross_entropy(F.linear(h, w)[:, :50257].float(), t))
    def comp():
        with torch.autocast("cuda", torch.bfloat16):
            compiled().backward()
    print(f"vocab rows {vocab}: plain {timed(plain):.2f} ms, compiled {timed(comp):.2f} ms", flush=True)
    for rows in (256, 1024, 4096, 16384):
        L.GPU_CHUNK_ROWS = rows
        def fused():
            with torch.autocast("cuda", torch.bfloat16):
                L.head_cross_entropy(h, w, t, vocab_size=50257).backward()
        torch.cuda.reset_peak_memory_stats()
        ms = timed(fused)
        print(f"  fused, {rows} rows: {ms:.2f} ms, peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", flush=True)
PY
}
export -f loss_chunks

TRAIN=(model=small model.pad_vocab_to=64 data=text data.path=../shared/data/wikitext-2/wiki.valid.tokens
       data.batch_size=16 trainer.precision=bf16 trainer.compile=true trainer.max_steps=40 trainer.eval_freq=20
       trainer.progress=false logger=none)
case ${1:-a} in
a)
  # Only the files that hold CUDA tests: the others may need packages the GPU machine lacks.
  step tests 300 python3 -m pytest -q -p no:cacheprovider -m cuda $(grep -l requires_cuda tests/*/test_*.py)
  step bench-eager 200 python3 -m gpt2exp.bench "${SMALL[@]}" bench.new_tokens=256 bench.sections=[peak,train,generate]
  ;;
b)
  step bench-compiled 230 python3 -m gpt2exp.bench "${SMALL[@]}" bench.compile=true bench.sections=[peak,train]
  step train-compiled-1 120 python3 -m gpt2exp.train "${TRAIN[@]}"
  step train-compiled-2 60 python3 -m gpt2exp.train "${TRAIN[@]}"
  ;;
c)
  step bench-xl 120 python3 -m gpt2exp.bench model=xl model.pad_vocab_to=64 bench.precision=bf16 \
    bench.sections=[train] bench.transformers=false bench.activation_checkpointing=true bench.batch_size=16 \
    bench.steps=3 bench.warmup=1
  step loss 90 bash -c loss_chunks
  ;;
*)
  echo "usage: gpu_check.sh [a|b|c]" >&2
  exit 2
  ;;
esac
