#!/usr/bin/env bash
# Native terms vs the same model written as a scripted Φ (docs/scripted.md, "Speed"): the P-MLP 784-512-10 and a
# small Hopfield-ResNet13 (H = 16, widths 16-32-32-64), same seed → same parameters and batch, float64, CPU,
# OMP_NUM_THREADS=1. Prints the best of 3 CPU times (user + sys) of `epcheck estimate` (the estimator, then BPTT and truncated
# BPTT, as `estimate` runs them) per model and estimator, and the ratio scripted / native.
#   scripts/scripted_speed.sh [EPCHECK_BINARY]
source "$(dirname "$0")/env.sh"
set +e
BIN="${1:-${CARGO_TARGET_DIR:-target}/debug/epcheck}"
export OMP_NUM_THREADS=1
D="$(mktemp -d)"
.venv/bin/python -W ignore fixtures/scripted/models.py pmlp "$D/pmlp.pt" archi=784-512-10 || exit 2
.venv/bin/python -W ignore fixtures/scripted/models.py resnet13 "$D/resnet13.pt" c0=3 height=16 widths=16-32-32-64 classes=10 || exit 2
best() { # best CPU time (user + sys, s) of 3 runs of epcheck "$@" (CPU time: the machine may be shared)
    local b=1e9 t
    for _ in 1 2 3; do
        TIMEFORMAT='%U %S'
        t=$( { time "$BIN" "$@" --out "$D/runs" > /dev/null 2>&1; echo "rc $?" >&2; } 2>&1 )
        # exit 0 or 1 (pass / fail or inconclusive: a timing run scores nothing); 2 = could not run
        case "$t" in *"rc 0"*|*"rc 1"*) ;; *) echo "failed: $*" >&2; echo nan; return ;; esac
        t=$(echo "$t" | grep -v '^rc' | awk '{ print $1 + $2 }')
        b=$(awk -v a="$t" -v b="$b" 'BEGIN { print (a < b) ? a : b }')
    done
    printf "%.2f" "$b"
}
set -f  # the --set values contain brackets
echo "| model | run | native CPU (s) | scripted CPU (s) | scripted / native |"
echo "|---|---|---|---|---|"
row() { # label, native args, scripted args, common args
    local n s
    n=$(best estimate $2 $4)
    s=$(best estimate $3 $4)
    echo "| $1 | \`$4\` | $n | $s | $(awk -v s="$s" -v n="$n" 'BEGIN { printf "%.1f", s / n }')× |"
}
row "P-MLP 784-512-10, B = 20" "--preset p-mlp" "--energy $D/pmlp.pt" "--estimator ep_centered --T 30 --K 10"
row "P-MLP 784-512-10, B = 20" "--preset p-mlp" "--energy $D/pmlp.pt" "--estimator ep_plus --T 100 --K 30"
row "ResNet13 H = 16, 16-32-32-64, B = 8" "--preset hopfield-resnet13 --set height=16 --set widths=[16,32,32,64] --loss mse --activation relu6 --schedule async2" "--energy $D/resnet13.pt" "--estimator ep_centered --batch 8 --T 30 --K 10 --beta 0.05 --dtype f64 --seed 0"
rm -rf "$D"
