"""Profile one fwd+bwd of hierarchical attention on CUDA and print the top kernels (a tuning aid)."""

import argparse

import torch

from r1_ds.model.hierarchical_attention import hierarchical_attention_flex

p = argparse.ArgumentParser()
p.add_argument("--T", type=int, default=8192)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--dim", type=int, default=2048)
p.add_argument("--level-heads", type=int, nargs=3, default=(8, 16, 32))
args = p.parse_args()
kw = dict(level_heads=tuple(args.level_heads), window=128, paragraph_size=128, document_size=1024, top_k=4,
          rope_theta=10000.0)
q, k, v = (torch.randn(args.batch, args.T, args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
           for _ in range(3))
g = torch.randn_like(q)


def step():
    torch.autograd.backward(hierarchical_attention_flex(q, k, v, **kw), (g, g, g))


for _ in range(3):
    step()
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
    step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
