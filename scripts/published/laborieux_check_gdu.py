"""The published O(K²) GDU computation of Laborieux et al. 2021 (github.com/Laborieux-Axel/Equilibrium-Propagation,
model_utils.check_gdu + RMSE, as main.py's --todo gducheck runs them), timed on the P-MLP of issue 15.

    python scripts/published/laborieux_check_gdu.py CHECKOUT [K] [--thirdphase]

CHECKOUT: a checkout of that repository (its model_utils.py is imported as published). T1 = K + 30, T2 = K,
784-512-512-10, B128, my_sigmoid (main.py's default activation), MSE, betas (0, 0.01) as main.py's defaults;
--thirdphase also runs check_gdu with −β (main.py --thirdphase: the ±β series epcheck's one-sweep check scores).
Random inputs in [0, 1) and labels, seeded (the timing does not depend on MNIST). float32, torch's default threads.
Prints the wall time of the check_gdu call(s) + RMSE, and the process's peak RSS.
"""
import resource
import sys
import time
import types

ref = sys.argv[1]
K = int(sys.argv[2]) if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else 100
third = "--thirdphase" in sys.argv
# model_utils imports plotting and dataset modules at the top that check_gdu never uses; stub the missing ones.
for name in ["matplotlib", "matplotlib.pyplot", "torchvision", "torchvision.transforms", "torchvision.transforms.functional"]:
    try:
        __import__(name)
    except ImportError:
        sys.modules[name] = types.ModuleType(name)
sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
sys.modules["matplotlib"].use = lambda *a, **k: None
sys.path.insert(0, ref)
import torch  # noqa: E402
from model_utils import P_MLP, RMSE, check_gdu, my_sigmoid  # noqa: E402

torch.manual_seed(0)
model = P_MLP([784, 512, 512, 10], activation=my_sigmoid)
x = torch.rand(128, 784)
y = torch.randint(10, (128,))
crit = torch.nn.MSELoss(reduction="none")
t0 = time.time()
BPTT, EP = check_gdu(model, x, y, K + 30, K, (0.0, 0.01), crit)
if third:
    _, EP2 = check_gdu(model, x, y, K + 30, K, (0.0, -0.01), crit)
RMSE(BPTT, EP)
wall = time.time() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1048576
print(f"published check_gdu K={K} T1={K + 30}{' +thirdphase' if third else ''}: {wall:.2f} s, peak RSS {rss:.2f} GB")
