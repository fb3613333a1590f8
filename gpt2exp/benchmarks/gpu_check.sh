#!/usr/bin/env bash
# Issue 11's GPU measurements for a lent GPU machine; logs under $OUT. A session has 15 minutes of
# device time in all, machine start included, so the parts go by priority and each fits one call:
#   ../shared/tools/gpu-kit                # here, once: packs .gpu/
#   device run, carry [".gpu"], timeout_s 600:  bash gpt2exp/benchmarks/gpu_check.sh [part]
# a (default, <= 8 min): the CUDA tests, then the eager and the compiled bench (training, decoding).
# b (<= 5 min): two identical compiled training runs (time to first step, cold and from the
#    compile cache), then xl training with activation checkpointing at batch 16.
# c (<= 4 min): the fused loss's chunk sizes, and a one-GPU torchrun training run.
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
  step tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_decoding.py tests/test_model.py tests/test_fast_paths.py
  step bench-eager 150 python3 -m gpt2exp.bench "${SMALL[@]}" bench.new_tokens=256 bench.sections=[peak,train,generate]
  step bench-compiled 230 python3 -m gpt2exp.bench "${SMALL[@]}" bench.compile=true bench.sections=[peak,train]
  ;;
b)
  step train-compiled-1 120 python3 -m gpt2exp.train "${TRAIN[@]}"
  step train-compiled-2 60 python3 -m gpt2exp.train "${TRAIN[@]}"
  step bench-xl 120 python3 -m gpt2exp.bench model=xl model.pad_vocab_to=64 bench.precision=bf16 \
    bench.sections=[train] bench.transformers=false bench.activation_checkpointing=true bench.batch_size=16 \
    bench.steps=3 bench.warmup=1
  ;;
c)
  step loss 90 bash -c loss_chunks
  step torchrun-1gpu 120 torchrun --standalone --nproc_per_node=1 -m gpt2exp.train "${TRAIN[@]}" trainer.compile=false
  ;;
esac
