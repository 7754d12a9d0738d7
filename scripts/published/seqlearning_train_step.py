#!/usr/bin/env python3
"""Times one training step of the published sequence-learning EP code (NeuroCompLab-psu/EqProp-SeqLearning,
`model_utils.py`, its `train` loop body with `thirdphase=True`: free phase T1, +β phase T2, −β phase T2 from the
free state, `compute_syn_grads((β, −β))`, Adam step) on a synthetic batch, float32. For the comparison with
`epcheck`'s `examples/perf.rs train` in reports/performance.md ("Attention training steps").

    python seqlearning_train_step.py --ref /path/to/EqProp-SeqLearning --model imdb|snli --L 100 --d 300 \
        --widths 1000,40,2 --batch 8 --T 50 --K 25 --reps 3

Prints the median wall time of one step (after one warm-up step). Libtorch threads: torch's default unless
OMP_NUM_THREADS is set.
"""
import argparse
import os
import sys
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--ref", required=True)
ap.add_argument("--model", choices=["imdb", "snli"], required=True)
ap.add_argument("--L", type=int, required=True)
ap.add_argument("--d", type=int, required=True)
ap.add_argument("--widths", required=True)
ap.add_argument("--batch", type=int, required=True)
ap.add_argument("--T", type=int, required=True)
ap.add_argument("--K", type=int, required=True)
ap.add_argument("--beta", type=float, default=0.1)
ap.add_argument("--reps", type=int, default=3)
a = ap.parse_args()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures", "conformance", "drivers"))
import _stubs  # noqa: E402  (stand-ins for the reference code's plotting and dataset imports)

_stubs.install_default()

sys.path.insert(0, a.ref)
import model_utils as mu  # noqa: E402

torch.manual_seed(0)
widths = [int(w) for w in a.widths.split(",")]
if a.model == "imdb":
    model = mu.IMDB_model([a.L * a.d] + widths, activation=torch.tanh, seqLen=a.L)
    model.enc_len = a.d
    model.synapses[0] = torch.nn.Linear(a.d, a.d, bias=False)
    x = torch.rand(a.batch, a.L, a.d)
else:
    model = mu.P_MLP([4 * a.L * a.d] + widths, activation=torch.tanh, seqLen=a.L)
    model.enc_len = a.d
    for i in range(4):
        model.synapses[i] = torch.nn.Linear(a.d, a.d, bias=False)
    x = torch.rand(a.batch, 2 * a.L, a.d)
nc = widths[-1]
y = torch.randint(0, nc, (a.batch,))
crit = torch.nn.MSELoss(reduction="none")
opt = torch.optim.Adam([{"params": s.parameters(), "lr": 1e-4} for s in model.synapses], eps=1e-8)


def step():
    neurons = model.init_neurons(x.size(0), x.device, x)
    neurons = model(x, y, neurons, a.T, beta=0.0, criterion=crit)
    neurons_1 = mu.copy(neurons)
    neurons = model(x, y, neurons, a.K, beta=a.beta, criterion=crit)
    neurons_2 = mu.copy(neurons)
    neurons = mu.copy(neurons_1)
    neurons = model(x, y, neurons, a.K, beta=-a.beta, criterion=crit)
    neurons_3 = mu.copy(neurons)
    model.compute_syn_grads(x, y, neurons_2, neurons_3, (a.beta, -a.beta), crit)
    opt.step()


step()
ts = []
for _ in range(a.reps):
    t0 = time.perf_counter()
    step()
    ts.append(time.perf_counter() - t0)
ts.sort()
print(f"published {a.model} L={a.L} d={a.d} widths={a.widths} B{a.batch} T={a.T} K={a.K} threads={torch.get_num_threads()}: "
      f"median {ts[len(ts) // 2] * 1e3:.1f} ms per training step ({a.reps} reps: {', '.join(f'{t * 1e3:.1f}' for t in ts)})")
